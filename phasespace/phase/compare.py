"""Comparing a sweep with the paper's published sweep tables (or any two tables) (SPEC §5.2, §6).

Both sides are read into the engine's runs-table columns by :func:`load_table`, which accepts a
sweep directory (its ``runs.csv``), an engine ``runs.csv`` or a published table (shipped with the
package, gzipped: :func:`published_tables`, ``phasespace/data/1l_*.csv.gz``). Published columns
are renamed::

    attn_coeff → attention_rate     C → p                 act_fn → act (lower case)
    gradient_sim → gradient_symmetricity                  circularity → circularity
    distance_irrelevance → distance_irrelevance_largest_wrong  (the tables used the largest
        WRONG logit, SPEC §5.2; the engine's correct-logit ``distance_irrelevance`` has no
        published counterpart)
    validation_accuracy → test_accuracy  parameter_norm → param_norm  frac → train_fraction
    epoch → steps                   diff_vocab, eqn_sign 0/1 → bool

so each metric is compared with its own variant. Rows are then filtered (:func:`select`) to one
architecture (default: the transformer, 1 layer, ReLU, standard tokens) and to rows with finite gradient
symmetricity and circularity (the published tables leave failed or unfinished runs empty); with
these filters the published tables give the run counts of SPEC §6 (2381 / 817 circular at
d_model = 128 from ``1l_fixedwidth.csv``; 296/130, 283/110, 301/115, 314/111 in the width bins
32–63 … 256–511 of ``1l_varywidth.csv``).

Each side is one family after :func:`select` (its phase arrays have a ``family`` dimension of
size 1, pooled over the recipe settings, e.g. the modulus p, that :func:`compare` reports in its
notes when they differ). Attention-rate rows use the half-open bins of
:func:`phasespace.phase.diagram.bin_index` (α = 0.6 is in the 0.60–0.70 row).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phasespace.analysis import classify
from phasespace.io import store
from phasespace.phase import diagram
from phasespace.spec.parse import PHASE_DEFAULTS

PUBLISHED_COLUMNS = {
    "attn_coeff": "attention_rate",
    "C": "p",
    "act_fn": "act",
    "gradient_sim": "gradient_symmetricity",
    "distance_irrelevance": "distance_irrelevance_largest_wrong",
    "validation_accuracy": "test_accuracy",
    "parameter_norm": "param_norm",
    "frac": "train_fraction",
    "epoch": "steps",
}
"""Published-table column → engine runs-table column (:func:`load_table`)."""

RECIPE_COLUMNS = ("p", "steps", "train_fraction", "lr", "weight_decay", "n_heads")
"""Settings reported by :func:`compare` when they differ between the two sides."""

REQUIRED = ("gradient_symmetricity", "circularity")
"""Rows without a finite value in these columns are skipped (failed/unfinished runs)."""

COMPARED = (
    "gradient_symmetricity",
    "distance_irrelevance_largest_wrong",
    "distance_irrelevance",
    "circularity",
    "circular",
    "test_accuracy",
    "param_norm",
)
"""Binned means compared (``Comparison.diff``; those present on both sides)."""

PRINTED = (
    "gradient_symmetricity",
    "distance_irrelevance_largest_wrong",
    "distance_irrelevance",
    "circular",
    "test_accuracy",
)
"""Binned means printed side by side by :func:`format_comparison`."""

"""Short form of each :data:`phasespace.phase.diagram.STATUS` name in the α* table."""

PUBLISHED_TABLES = ("1l_fixedwidth.csv", "1l_varywidth.csv")
"""The paper's two published sweep tables (SPEC §6), by file name."""

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
"""The package data folder: the published tables, gzipped (``<name>.gz``)."""


def published_tables(folder: str | None = None) -> list[str]:
    """Paths of the two published tables (:data:`PUBLISHED_TABLES`).

    Args:
        folder: read them from this folder instead (``<name>`` or ``<name>.gz``); by default the
            gzipped copies shipped with the package (:data:`DATA_DIR`), found from any directory.

    Returns:
        one path per table, for :func:`load_table`.
    """
    if folder is None:
        return [os.path.join(DATA_DIR, f"{name}.gz") for name in PUBLISHED_TABLES]
    paths = []
    for name in PUBLISHED_TABLES:
        path = os.path.join(folder, name)
        paths.append(path if os.path.exists(path) or not os.path.exists(f"{path}.gz") else f"{path}.gz")
    return paths


def load_table(path: str) -> dict[str, np.ndarray]:
    """Read a sweep directory, an engine ``runs.csv`` or a published table into engine columns.

    Args:
        path: a directory holding ``runs.csv``, or a CSV file (gzipped if it ends in ``.gz``).

    Returns:
        columns (R,): at least ``attention_rate``, ``d_model``, ``n_layers``, ``act`` (str),
        ``diff_vocab``, ``eqn_sign`` (bool) and whichever metrics the table has (float64, NaN
        where empty), named as in :data:`PUBLISHED_COLUMNS`.

    Raises:
        FileNotFoundError: if the path (or the directory's ``runs.csv``) does not exist.
        ValueError: if the table is empty, has no rows, or lacks ``attention_rate``/``attn_coeff``,
            ``d_model`` or a :data:`REQUIRED` metric.
    """
    csv_path = os.path.join(path, "runs.csv") if os.path.isdir(path) else path
    if not os.path.exists(csv_path):
        raise FileNotFoundError(f"{path}: no such table (expected a sweep directory or a CSV file)")
    raw = store.read_csv(csv_path)
    published = "attn_coeff" in raw
    cols: dict[str, np.ndarray] = {}
    for k, v in raw.items():
        name = PUBLISHED_COLUMNS.get(k, k) if published else k
        if published and k == "distance_irrelevance":
            name = "distance_irrelevance_largest_wrong"
        cols[name] = v
    for need in ("attention_rate", "d_model", *REQUIRED):
        if need not in cols:
            raise ValueError(f"{csv_path}: no column {need!r} (nor its published name); not a runs table")
    n = len(cols["attention_rate"])
    if n == 0:
        raise ValueError(f"{csv_path}: a header but no rows; nothing to compare")
    cols.setdefault("model", np.asarray(["transformer"] * n))
    cols.setdefault("n_layers", np.ones(n, np.int64))
    cols.setdefault("act", np.asarray(["relu"] * n))
    cols["act"] = np.char.lower(np.asarray(cols["act"], dtype=str))
    for k in ("diff_vocab", "eqn_sign"):
        v = cols.get(k, np.zeros(n, bool))
        if v.dtype.kind in "iuf":
            v = np.asarray(v) != 0
        elif v.dtype.kind in "US":
            v = np.isin(np.char.lower(v), ["true", "1"])
        cols[k] = v.astype(bool)
    for k in (*COMPARED, "attention_rate", "d_model"):
        if k in cols and k != "circular":
            cols[k] = np.asarray(cols[k], dtype=np.float64)
    return cols


def select(
    runs: Mapping[str, np.ndarray],
    model: str | None = "transformer",
    n_layers: int | None = 1,
    act: str | None = "relu",
    diff_vocab: bool | None = False,
    eqn_sign: bool | None = False,
    require: Sequence[str] = REQUIRED,
    operation: str | None = "add",
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Filter a table to one architecture and to rows whose ``require`` metrics are finite.

    Args:
        runs: columns from :func:`load_table`.
        model, n_layers, act, diff_vocab, eqn_sign: keep rows equal to these (None: no filter;
            a table without a ``model`` column holds transformers).
        operation: keep rows of this operation (None: no filter; a table without an
            ``operation`` column, e.g. a published one, holds addition, the only operation the
            published tables and the Clock/Pizza labels know).
        require: metric columns that must be finite (rows with empty metrics are skipped).

    Returns:
        ``(rows, counts)``: the selected columns and ``{"rows", "architecture", "kept",
        "skipped_empty"}`` (rows read, rows of the architecture, rows kept, rows of the
        architecture skipped for empty metrics).
    """
    n = len(runs["attention_rate"])
    arch = np.ones(n, bool)
    for key, want in (
        ("model", model),
        ("n_layers", n_layers),
        ("act", act),
        ("diff_vocab", diff_vocab),
        ("eqn_sign", eqn_sign),
        ("operation", operation),
    ):
        if want is not None and (key not in ("model", "operation") or key in runs):
            arch &= np.asarray(runs[key]) == want
    ok = arch.copy()
    for k in require:
        if k in runs:
            ok &= np.isfinite(np.asarray(runs[k], dtype=np.float64))
    out = {k: np.asarray(v)[ok] for k, v in runs.items()}
    counts = {"rows": n, "architecture": int(arch.sum()), "kept": int(ok.sum())}
    counts["skipped_empty"] = counts["architecture"] - counts["kept"]
    return out, counts


@dataclasses.dataclass
class Comparison:
    """Two tables binned alike (see :func:`compare`).

    Attributes:
        names: the two sources (paths).
        counts: per side, the :func:`select` counts.
        arrays: per side, :func:`phasespace.phase.diagram.phase_arrays` over shared bins, one
            family (``group_by=()``: the filters of :func:`select` fix the architecture).
        diff: ``binned__*__mean`` and ``transition__*__alpha_star`` arrays of side 0 minus side 1,
            for keys present on both sides.
        options: the binning options (shared bin edges) and label thresholds used.
        notes: settings that differ between the sides (modulus, steps, …), to read the
            differences with.
    """

    names: tuple[str, str]
    counts: tuple[dict[str, int], dict[str, int]]
    arrays: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]
    diff: dict[str, np.ndarray]
    options: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)


def shared_width_edges(widths: Sequence[np.ndarray]) -> list[float]:
    """Octave edges [2^k, 2^(k+1)) covering every width of every side (the paper's width bins)."""
    w = np.concatenate([np.asarray(x, dtype=np.float64) for x in widths])
    w = w[np.isfinite(w)]
    edges, _ = diagram.bin_edges(w, "octave", diagram.WIDTH_AXIS)
    return edges.tolist()


def compare(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    names: tuple[str, str] = ("A", "B"),
    options: Mapping[str, Any] | None = None,
    filters: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, Any] | None = None,
) -> Comparison:
    """Bin two tables alike and fit α* per width bin on each (SPEC §6).

    Args:
        a, b: columns from :func:`load_table`.
        names: labels of the two sides.
        options: :data:`phasespace.spec.parse.PHASE_DEFAULTS` fields; by default 10 attention-rate bins
            on [0, 1] and octave width bins shared by both sides.
        filters: keyword arguments of :func:`select` (default: 1 layer, ReLU, standard tokens).
        thresholds: the label thresholds (:data:`phasespace.defaults.THRESHOLDS` names; the
            defaults where missing).

    Returns:
        :class:`Comparison`; ``diff`` is side a minus side b (zero for a table against itself).
    """
    filters = dict(filters or {})
    sa, ca = select(a, **filters)
    sb, cb = select(b, **filters)
    opts = dict(PHASE_DEFAULTS)
    opts["alpha_bins"] = 10
    opts["width_bins"] = (
        shared_width_edges([sa["d_model"], sb["d_model"]])
        if len(sa["d_model"]) + len(sb["d_model"])
        else [1.0, 2.0]
    )
    opts.update(options or {})
    pa = diagram.phase_arrays(sa, opts, group_by=(), thresholds=thresholds)
    pb = diagram.phase_arrays(sb, opts, group_by=(), thresholds=thresholds)
    diff = {}
    for k in pa:
        if k in pb and (k.endswith("__mean") or k.endswith("__alpha_star")):
            diff[k] = pa[k] - pb[k]
    notes = []
    for side, x in zip("AB", (sa, sb), strict=True):
        if "p" in x and len(np.unique(np.asarray(x["p"]))) > 1:
            notes.append(f"{side} pools several moduli p: {_values(np.unique(np.asarray(x['p'])))}")
    for key in RECIPE_COLUMNS:
        if key in sa and key in sb:
            va, vb = (np.unique(np.asarray(x[key])) for x in (sa, sb))
            if len(va) and len(vb) and (len(va) != len(vb) or np.any(va != vb)):
                notes.append(f"{key} differs: A {_values(va)}; B {_values(vb)}")
    na, nb = (p["binned__all__gradient_symmetricity__count"].sum(axis=(0, 2)) for p in (pa, pb))
    if na.sum() and nb.sum() and not np.any((na > 0) & (nb > 0)):
        wa, wb = (_values(np.unique(np.asarray(x["d_model"]))) for x in (sa, sb))
        notes.append(
            f"no width bin holds networks of both sides (d_model A {wa}; B {wb}): nothing to compare "
            "side by side; compare a sweep whose widths overlap the table's"
        )
    return Comparison(names, (ca, cb), (pa, pb), diff, {**opts, **classify.thresholds(thresholds)}, notes)


def _values(v: np.ndarray, n: int = 5) -> str:
    shown = ", ".join(f"{x:g}" if isinstance(x, (int, float, np.number)) else str(x) for x in v[:n])
    return shown + (" …" if len(v) > n else "")


def _fmt(x: float, width: int = 7, digits: int = 3) -> str:
    return f"{'—':>{width}}" if not np.isfinite(x) else f"{x:{width}.{digits}f}"


def format_comparison(c: Comparison, subsets: Sequence[str] = diagram.SUBSETS) -> str:
    """The side-by-side text table printed by ``phasespace compare``."""
    pa, pb = c.arrays
    w_edges = pa[f"edges__{diagram.BIN_DIMS[0]}"]
    a_edges = pa[f"edges__{diagram.BIN_DIMS[1]}"]
    lines = [f"A = {c.names[0]}", f"B = {c.names[1]}"]
    for name, cnt in zip(("A", "B"), c.counts, strict=True):
        lines.append(
            f"{name}: {cnt['kept']} networks kept of {cnt['architecture']} with the architecture "
            f"({cnt['rows']} rows; {cnt['skipped_empty']} skipped for empty metrics)"
        )
    lines.extend(f"note: {n}" for n in c.notes)
    present = [m for m in PRINTED if f"binned__all__{m}__mean" in pa and f"binned__all__{m}__mean" in pb]
    short = diagram.METRIC_NAMES
    for subset in subsets:
        for wi in range(len(w_edges) - 1):
            na = pa[f"binned__{subset}__gradient_symmetricity__count"][0, wi]
            nb = pb[f"binned__{subset}__gradient_symmetricity__count"][0, wi]
            if na.sum() == 0 and nb.sum() == 0:
                continue
            lines.append("")
            lines.append(
                f"== {subset} networks, d_model {diagram.bin_label(pa, diagram.BIN_DIMS[0], wi)}: "
                f"A {na.sum()}, B {nb.sum()} =="
            )
            metrics = [m for m in present if not (subset == "circular" and m == "circular")]
            head = f"{'attention rate':>14} {'n A':>5} {'n B':>5}"
            for m in metrics:
                t = short[m]
                head += f" | {t + ' A':>{max(7, len(t) + 2)}} {'B':>7} {'A−B':>7}"
            lines.append(head)
            for ai in range(len(a_edges) - 1):
                if na[ai] == 0 and nb[ai] == 0:
                    continue
                row = f"{a_edges[ai]:6.2f}–{a_edges[ai + 1]:<7.2f} {na[ai]:5d} {nb[ai]:5d}"
                for m in metrics:
                    t = short[m]
                    va = pa[f"binned__{subset}__{m}__mean"][0, wi, ai]
                    vb = pb[f"binned__{subset}__{m}__mean"][0, wi, ai]
                    row += f" | {_fmt(va, max(7, len(t) + 2))} {_fmt(vb)} {_fmt(va - vb)}"
                lines.append(row)
    lines.append("")
    lines.append(
        "Transition attention rate α* (label probability 0.5 in a logistic fit on α; ± standard error)"
    )
    lines.append(
        f"{'d_model':>9} {'subset':>8} {'label':>33} {'n A':>5} {'α* A':>20} "
        f"{'n B':>5} {'α* B':>20} {'A−B':>7}"
    )
    seen: set[str] = set()
    labels = [k for k in classify.LABELS if f"transition__all__{k}__alpha_star" in pa]
    for wi in range(len(w_edges) - 1):
        for subset in subsets:
            for lab in labels:
                key = f"transition__{subset}__{lab}"
                if f"{key}__alpha_star" not in pb:
                    continue
                cells = []
                for p in (pa, pb):
                    a_star, se = p[f"{key}__alpha_star"][0, wi], p[f"{key}__se"][0, wi]
                    st = str(p[f"{key}__status"][0, wi])
                    seen.add(st)
                    s = _fmt(a_star, 6) + (f" ±{se:.3f}" if st == "fitted" else f" {st}")
                    cells.append((int(p[f"{key}__n"][0, wi]), s, a_star))
                if cells[0][0] == 0 and cells[1][0] == 0:
                    continue
                lines.append(
                    f"{diagram.bin_label(pa, diagram.BIN_DIMS[0], wi):>9} {subset:>8} {lab:>33} "
                    f"{cells[0][0]:5d} {cells[0][1]:>20} {cells[1][0]:5d} {cells[1][1]:>20} "
                    f"{_fmt(cells[0][2] - cells[1][2])}"
                )
    lines.append("labels:")
    lines.extend(diagram.label_legend(c.options))
    lines.append("status:")
    lines.extend(diagram.status_legend(sorted(seen)))
    return "\n".join(lines)


def comparison_rows(c: Comparison) -> list[dict[str, Any]]:
    """The α* table of a comparison as rows (for CSV): one per width bin, subset and label."""
    pa, pb = c.arrays
    w_edges = pa[f"edges__{diagram.BIN_DIMS[0]}"]
    rows = []
    for wi in range(len(w_edges) - 1):
        for subset in diagram.SUBSETS:
            for lab in classify.LABELS:
                key = f"transition__{subset}__{lab}"
                if f"{key}__alpha_star" not in pa or f"{key}__alpha_star" not in pb:
                    continue
                row: dict[str, Any] = {
                    "d_model_low": w_edges[wi],
                    "d_model_high": w_edges[wi + 1],
                    "subset": subset,
                    "label": lab,
                }
                for side, p in zip("AB", (pa, pb), strict=True):
                    for f in diagram.TRANSITION_FIELDS:
                        row[f"{f}_{side}"] = p[f"{key}__{f}"][0, wi]
                row["alpha_star_diff"] = row["alpha_star_A"] - row["alpha_star_B"]
                rows.append(row)
    return rows
