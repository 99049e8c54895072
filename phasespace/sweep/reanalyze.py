"""``phasespace analyze DIR``: recompute every metric (SPEC §5) of a finished sweep from its saved
final parameters, or of a folder of reference checkpoints, and write the table and arrays.

* A sweep directory (has ``runs.csv`` and ``params/*.npz``): ``runs.csv`` is updated in place
  (metric columns replaced or added, training columns kept), ``analysis.npz``, ``phase.npz``
  (grid and binned arrays, α*) and the figures are rewritten.
* A folder of reference checkpoints (``<runid>.npz`` + ``<runid>.json``, transformers and MLP
  models): one row per checkpoint in ``<out>/runs.csv`` and the array metrics in
  ``<out>/analysis.npz`` (with ``run`` names). Checkpoints of the same architecture are analysed
  together as one vmapped population. ``phasespace reference`` is a view of the same evaluation
  (:func:`reference_table`: the transformer checkpoints, one table).

Both write through :mod:`phasespace.sweep.derived`, the writer of ``phasespace run``.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from phasespace.analysis.circuits import analyze_full
from phasespace.defaults import ATTENTION_FAMILIES
from phasespace.io import store
from phasespace.io.params import list_bucket_params, load_bucket_params
from phasespace.io.reference import load_reference_checkpoint, read_reference_config, reference_labels
from phasespace.models.registry import arch_columns, family
from phasespace.population.stack import attn_scale
from phasespace.spec.expand import expand
from phasespace.spec.parse import (
    ANALYSIS_DEFAULTS,
    SweepSpec,
    spec_from_dict,
)
from phasespace.sweep.derived import RUNS_FILE, array_metrics, metric_values, write_results
from phasespace.tasks import train_mask

REFERENCE_COLUMNS = (
    "run",
    "model",
    "attention_rate",
    "p",
    "d_model",
    "n_layers",
    "act",
    "diff_vocab",
    "eqn_sign",
)
"""Leading columns of the reference table (the checkpoint's configuration)."""


def reference_paths(folder: str, transformers_only: bool = False) -> list[str]:
    """The reference checkpoints in ``folder`` (``<runid>.npz`` with a ``<runid>.json`` config),
    sorted by run id; with ``transformers_only``, without the MLP models (config ``model_type``).

    Raises:
        FileNotFoundError: if ``folder`` holds no checkpoints.
    """
    paths = sorted(p for p in glob.glob(os.path.join(folder, "*.npz")) if os.path.exists(p[:-4] + ".json"))
    if transformers_only:
        paths = [p for p in paths if not read_reference_config(p[:-4] + ".json").get("model_type")]
    if not paths:
        kind = "transformer checkpoints" if transformers_only else "reference checkpoints"
        raise FileNotFoundError(f"{folder}: no {kind} (<runid>.npz with <runid>.json)")
    return paths


def analyze_reference_checkpoints(
    paths: list[str], analysis: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every metric of the reference checkpoints ``paths`` (transformers and MLP models): the one
    evaluation path of ``phasespace analyze <folder>`` and ``phasespace reference``.

    Checkpoints of the same architecture are analysed together as one vmapped population by
    :func:`~phasespace.analysis.circuits.analyze_full`, the code that analyses sweeps.
    Train/test figures use a split drawn from data seed 0 with the config's ``frac`` (the
    released checkpoints do not record theirs); ``accuracy`` is over all p² pairs. MLP models
    have no attention rate (NaN in the table).

    Args:
        paths: ``<runid>.npz`` files, each with its ``<runid>.json`` config.
        analysis: options as a spec's ``[analysis]`` table (defaults where missing).

    Returns:
        ``(rows, arrays)``: one row per checkpoint (in ``paths`` order) with
        :data:`REFERENCE_COLUMNS` and every scalar metric; array metrics stacked (N, ...) in
        the same order (padded with NaN / −1 where shapes differ), plus ``run`` (N,).

    Raises:
        phasespace.io.reference.CheckpointError: for a checkpoint whose keys/shapes do not match.
    """
    opts = {**ANALYSIS_DEFAULTS, **(analysis or {})}
    loaded = [(os.path.basename(p)[:-4], *load_reference_checkpoint(p)) for p in paths]
    groups: dict[Any, list[int]] = {}
    for i, (_, arch, _, _) in enumerate(loaded):
        groups.setdefault(arch, []).append(i)
    rows: list[dict[str, Any]] = [{} for _ in loaded]
    for arch, idx in groups.items():
        params = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[loaded[i][2] for i in idx])
        cfgs = [loaded[i][3] for i in idx]
        no_attn = family(arch) not in ATTENTION_FAMILIES
        hp = {
            "attention_rate": np.asarray([0.0 if no_attn else float(c.get("attn_coeff", 1.0)) for c in cfgs]),
            "attn_scale": np.full(len(idx), attn_scale(arch.d_model, arch.n_heads), np.float32),
            "train_mask": np.stack([train_mask(arch.p, float(c.get("frac", 0.8)), 0) for c in cfgs]),
            "labels": np.concatenate([reference_labels(c, arch.p) for c in cfgs]),
        }
        scalars, arrays = analyze_full(arch, params, hp, opts)
        for j, i in enumerate(idx):
            rows[i] = {
                "run": loaded[i][0],
                **arch_columns(arch),
                "attention_rate": np.nan if no_attn else float(hp["attention_rate"][j]),
                **metric_values(scalars, arrays, j),
            }
    return rows, {**array_metrics(rows), "run": np.asarray([r["run"] for r in rows])}


def analyze_reference_dir(
    folder: str, analysis: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """:func:`analyze_reference_checkpoints` of every checkpoint in ``folder`` (sorted by run id).

    Raises:
        FileNotFoundError: if ``folder`` holds no checkpoints.
    """
    return analyze_reference_checkpoints(reference_paths(folder), analysis)


def table_columns(rows: list[dict[str, Any]], leading: list[str]) -> list[str]:
    """``leading``, then every other scalar key of the rows in order of appearance."""
    cols = list(leading)
    for r in rows:
        for k, v in r.items():
            if k not in cols and not (isinstance(v, np.ndarray) and v.ndim >= 1):
                cols.append(k)
    return cols


def write_reference_analysis(
    folder: str, out_dir: str, analysis: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """:func:`analyze_reference_dir` written to ``out_dir/runs.csv`` and
    ``out_dir/analysis.npz`` (:func:`phasespace.sweep.derived.write_results`); returns the rows."""
    rows, _ = analyze_reference_dir(folder, analysis)
    write_results(out_dir, rows, table_columns(rows, list(REFERENCE_COLUMNS)), None, key="run")
    return rows


def reference_table(folder: str, out_csv: str | None = None) -> list[dict[str, Any]]:
    """``phasespace reference``: :func:`analyze_reference_checkpoints` of the transformer
    checkpoints in ``folder`` (the paper's SPEC §7 models), optionally written as one CSV table.

    Raises:
        FileNotFoundError: if ``folder`` holds no transformer checkpoints.
    """
    rows, _ = analyze_reference_checkpoints(reference_paths(folder, transformers_only=True))
    if out_csv:
        store.write_csv(out_csv, table_columns(rows, list(REFERENCE_COLUMNS)), rows)
    return rows


def stored_spec(sweep_dir: str, analysis: Mapping[str, Any] | None = None) -> SweepSpec | None:
    """The spec of a sweep directory (its ``spec.json``, keys of earlier versions renamed) with
    ``analysis`` overriding its ``[analysis]`` options; None if the directory has no ``spec.json``.

    Raises:
        phasespace.spec.parse.SpecError: if the stored spec or the overrides are invalid.
    """
    path = os.path.join(sweep_dir, "spec.json")
    if not os.path.exists(path):
        return None
    raw = store.read_json_object(path)
    raw.pop("shard", None)  # a shard's record (phasespace.sweep.shard)
    raw["analysis"] = {**raw.get("analysis", {}), **(analysis or {})}
    return spec_from_dict(raw)


def analyze_sweep(sweep_dir: str, analysis: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Recompute every metric of a finished sweep from ``params/*.npz`` and rewrite its derived
    files (:func:`phasespace.sweep.derived.write_results`, the writer of ``phasespace run``).

    ``runs.csv`` keeps its rows and training columns (losses, first-100% steps, collapse); every
    metric column is replaced by the recomputed value or added, and the axis columns are taken
    from the spec's expansion (exact values). ``analysis.npz``, ``phase.npz`` and the figures
    are rewritten; on an unchanged sweep they come out as ``phasespace run`` wrote them.

    Args:
        sweep_dir: a directory written by ``phasespace run``.
        analysis: overrides of the spec's ``[analysis]`` options (e.g. the label thresholds).

    Returns:
        The updated rows (dicts, ``runs.csv`` order).

    Raises:
        FileNotFoundError: no ``runs.csv``, or no saved parameters (sweeps written before final
            parameters were saved cannot be re-analysed).
    """
    runs_path = os.path.join(sweep_dir, RUNS_FILE)
    if not os.path.exists(runs_path):
        raise FileNotFoundError(f"{sweep_dir}: no runs.csv; not a finished sweep directory")
    files = list_bucket_params(sweep_dir)
    if not files:
        raise FileNotFoundError(
            f"{sweep_dir}: no saved final parameters (params/*.npz); re-run the sweep to analyse it"
        )
    spec = stored_spec(sweep_dir, analysis)
    opts = spec.analysis if spec is not None else {**ANALYSIS_DEFAULTS, **(analysis or {})}
    with open(runs_path, newline="") as f:
        first = next(csv.reader(f), [])
    if "index" not in first:  # before the typed read, which would warn about every foreign column
        raise ValueError(
            f"{runs_path}: no 'index' column (columns: {', '.join(first[:8])}); not a runs table "
            "written by phasespace run"
        )
    table = store.read_runs(runs_path)
    header = list(table)
    rows = [{c: table[c][i] for c in header} for i in range(len(table["index"]))]
    pos = {int(i): r for r, i in enumerate(table["index"])}
    if spec is not None:
        for net in expand(spec):
            if net.index in pos:
                rows[pos[net.index]].update(net.row_values())
    for path in files:
        b = load_bucket_params(path)
        scalars, arrays = analyze_full(b.arch, b.params, b.hparams, opts)
        missing = sorted(set(int(i) for i in b.index) - set(pos))
        if missing:
            raise ValueError(
                f"{path}: networks {missing[:5]} are not rows of {runs_path}; the parameters belong to "
                "another sweep"
            )
        for j, index in enumerate(b.index):
            row = rows[pos[int(index)]]
            row.update(metric_values(scalars, arrays, j))
    write_results(sweep_dir, rows, table_columns(rows, header), spec)
    return rows


def is_reference_folder(folder: str) -> bool:
    """True if ``folder`` holds reference checkpoints (``*.npz`` with a ``.json`` config) and no
    ``runs.csv``."""
    if os.path.exists(os.path.join(folder, "runs.csv")):
        return False
    for p in glob.glob(os.path.join(folder, "*.npz")):
        j = p[:-4] + ".json"
        if os.path.exists(j):
            try:
                read_reference_config(j)
                return True
            except (OSError, ValueError):
                continue
    return False
