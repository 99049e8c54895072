"""``phasespace analyze DIR``: recompute every metric (SPEC §5) of a finished sweep from its saved
final parameters, or of a folder of reference checkpoints, and write the table and arrays.

* A sweep directory (has ``runs.csv`` and ``params/*.npz``): ``runs.csv`` is updated in place
  (metric columns replaced or added, training columns kept), ``analysis.npz`` and ``phase.npz``
  are rewritten.
* A folder of reference checkpoints (``<runid>.npz`` + ``<runid>.json``, transformers and MLP
  models): one row per checkpoint in ``<out>/runs.csv`` and the array metrics in
  ``<out>/analysis.npz`` (with ``run`` names). Checkpoints of the same architecture are analysed
  together as one vmapped population.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from phasespace.analysis.circuits import analyze_full
from phasespace.analysis.faults import describe_flags
from phasespace.io import store
from phasespace.io.params import list_bucket_params, load_bucket_params
from phasespace.io.reference import load_reference_checkpoint, read_reference_config
from phasespace.models.registry import family
from phasespace.phase import diagram
from phasespace.population.stack import attn_scale
from phasespace.spec.parse import ANALYSIS_DEFAULTS, spec_from_dict
from phasespace.sweep.run import ARRAYS_FILE, stack_padded, write_array_metrics
from phasespace.tasks import train_mask
from phasespace.training.step import label_collapsed

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


def _analysis_options(analysis: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(ANALYSIS_DEFAULTS)
    out.update(analysis or {})
    return out


def analyze_reference_dir(
    folder: str, analysis: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every metric of every reference checkpoint in ``folder`` (transformers and MLP models).

    Train/test figures use a split drawn from data seed 0 with the config's ``frac`` (the
    released checkpoints do not record theirs); ``accuracy`` is over all p² pairs. MLP models
    have no attention rate (NaN in the table).

    Args:
        folder: holds ``<runid>.npz`` and ``<runid>.json``.
        analysis: options as a spec's ``[analysis]`` table (defaults where missing).

    Returns:
        ``(rows, arrays)``: one row per checkpoint (sorted by run id) with
        :data:`REFERENCE_COLUMNS` and every scalar metric; array metrics stacked (N, ...) in
        the same order (padded with NaN / −1 where shapes differ), plus ``run`` (N,).

    Raises:
        FileNotFoundError: if ``folder`` holds no checkpoints.
        phasespace.io.reference.CheckpointError: for a checkpoint whose keys/shapes do not match.
    """
    opts = _analysis_options(analysis)
    paths = sorted(p for p in glob.glob(os.path.join(folder, "*.npz")) if os.path.exists(p[:-4] + ".json"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no reference checkpoints (<runid>.npz with <runid>.json)")
    loaded = [(os.path.basename(p)[:-4], *load_reference_checkpoint(p)) for p in paths]
    groups: dict[Any, list[int]] = {}
    for i, (_, arch, _, _) in enumerate(loaded):
        groups.setdefault(arch, []).append(i)
    rows: list[dict[str, Any]] = [{} for _ in loaded]
    for arch, idx in groups.items():
        params = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[loaded[i][2] for i in idx])
        cfgs = [loaded[i][3] for i in idx]
        mlp = family(arch) != "transformer"
        hp = {
            "attention_rate": np.asarray([0.0 if mlp else float(c.get("attn_coeff", 1.0)) for c in cfgs]),
            "attn_scale": np.full(len(idx), attn_scale(arch.d_model, arch.n_heads), np.float32),
            "train_mask": np.stack([train_mask(arch.p, float(c.get("frac", 0.8)), 0) for c in cfgs]),
        }
        scalars, arrays = analyze_full(arch, params, hp, opts)
        for j, i in enumerate(idx):
            row: dict[str, Any] = {
                "run": loaded[i][0],
                "model": family(arch),
                "attention_rate": np.nan if mlp else float(hp["attention_rate"][j]),
                "p": arch.p,
                "d_model": arch.d_model,
                "n_layers": arch.n_layers,
                "act": arch.act,
                "diff_vocab": arch.diff_vocab,
                "eqn_sign": arch.eqn_sign,
            }
            row.update({k: v[j] for k, v in scalars.items()})
            row.update({k: v[j] for k, v in arrays.items()})
            row["degenerate"] = describe_flags(int(row["degenerate"]))  # the flags' names, as runs.csv
            rows[i] = row
    array_names = [k for k, v in rows[0].items() if isinstance(v, np.ndarray) and v.ndim >= 1]
    stacked = {k: stack_padded([np.asarray(r[k]) for r in rows]) for k in array_names}
    stacked["run"] = np.asarray([r["run"] for r in rows])
    return rows, stacked


def _table_columns(rows: list[dict[str, Any]], leading: list[str]) -> list[str]:
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
    ``out_dir/analysis.npz`` (atomically); returns the rows."""
    rows, arrays = analyze_reference_dir(folder, analysis)
    store.write_csv(os.path.join(out_dir, "runs.csv"), _table_columns(rows, list(REFERENCE_COLUMNS)), rows)
    store.write_npz(os.path.join(out_dir, ARRAYS_FILE), arrays)
    return rows


def analyze_sweep(sweep_dir: str, analysis: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Recompute every metric of a finished sweep from ``params/*.npz`` and update its files.

    ``runs.csv`` keeps its rows and training columns (losses, first-100% steps, collapse); every
    metric column is replaced by the recomputed value or added. ``analysis.npz`` and (for grid
    sweeps) ``phase.npz`` are rewritten.

    Args:
        sweep_dir: a directory written by ``phasespace run``.
        analysis: overrides of the spec's ``[analysis]`` options.

    Returns:
        The updated rows (dicts, ``runs.csv`` order).

    Raises:
        FileNotFoundError: no ``runs.csv``, or no saved parameters (sweeps written before final
            parameters were saved cannot be re-analysed).
    """
    runs_path = os.path.join(sweep_dir, "runs.csv")
    if not os.path.exists(runs_path):
        raise FileNotFoundError(f"{sweep_dir}: no runs.csv; not a finished sweep directory")
    files = list_bucket_params(sweep_dir)
    if not files:
        raise FileNotFoundError(
            f"{sweep_dir}: no saved final parameters (params/*.npz); re-run the sweep to analyse it"
        )
    spec_raw: dict[str, Any] = {}
    spec_path = os.path.join(sweep_dir, "spec.json")
    if os.path.exists(spec_path):
        with open(spec_path) as f:
            spec_raw = json.load(f)
    opts = _analysis_options(spec_raw.get("analysis"))
    opts.update(analysis or {})
    table = store.read_runs(runs_path)
    header = list(table)
    n = len(table["index"])
    rows = [{c: table[c][i] for c in header} for i in range(n)]
    pos = {int(i): r for r, i in enumerate(table["index"])}
    for path in files:
        b = load_bucket_params(path)
        scalars, arrays = analyze_full(b.arch, b.params, b.hparams, opts)
        for j, index in enumerate(b.index):
            row = rows[pos[int(index)]]
            row.update({k: v[j] for k, v in scalars.items()})
            row.update({k: v[j] for k, v in arrays.items()})
            row["degenerate"] = describe_flags(int(row["degenerate"]))  # the flags' names, as run
            label_collapsed(row)  # collapse is a training record: the class stays "collapsed"
    columns = _table_columns(rows, header)
    store.write_csv(runs_path, columns, rows)
    write_array_metrics(os.path.join(sweep_dir, ARRAYS_FILE), rows)
    if spec_raw:
        spec = spec_from_dict(spec_raw)
        grid = [a for a in spec.grid_axes if a != "data_seed"]
        if not spec.sampled_axes:
            runs = {c: np.asarray([r.get(c, np.nan) for r in rows]) for c in columns if c != "bucket"}
            if "first_full_test_step" in runs:
                fft = runs["first_full_test_step"].astype(np.float64)
                runs["first_full_test_step"] = np.where(fft < 0, np.nan, fft)
            store.write_npz(os.path.join(sweep_dir, "phase.npz"), diagram.grid_arrays(runs, grid))
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
