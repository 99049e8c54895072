"""The one writer of a sweep's derived files: ``runs.csv``, ``analysis.npz``, ``history.npz``,
``metrics_history.npz``, ``phase.npz`` (grid arrays, binned arrays and the transitions α*) and
``figures/``. ``phasespace run`` (:func:`phasespace.sweep.run.run_sweep`) and
``phasespace analyze DIR`` (:func:`phasespace.sweep.reanalyze.analyze_sweep`) both write through
:func:`write_results`, so a re-analysis of an unchanged sweep rewrites the same files.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phasespace.analysis import classify
from phasespace.analysis.circuits import CircuitOptions, circuit_columns
from phasespace.analysis.faults import describe_flags
from phasespace.io import store
from phasespace.phase import diagram, figures
from phasespace.spec.parse import AXES, SweepSpec
from phasespace.training.step import HISTORY_FIELDS, RECORD_COLUMNS

RUN_COLUMNS = (
    "train_loss",
    "test_loss",
    "train_accuracy",
    "test_accuracy",
    "loss",
    "accuracy",
    "gradient_symmetricity",
    "gradient_symmetricity_zero_grads",
    "distance_irrelevance",
    "distance_irrelevance_largest_wrong",
    "circularity",
    "circular",
    "param_norm",
    *RECORD_COLUMNS,
    "degenerate",
    "precision",
    "compute",
)
"""Metric columns of ``runs.csv`` (after ``index``, ``bucket`` and every axis of
:data:`phasespace.spec.parse.AXES`; followed by :func:`phasespace.analysis.circuits.circuit_columns`)."""

RUNS_FILE = "runs.csv"
"""One row per network; written last, it marks a finished sweep."""
ARRAYS_FILE = "analysis.npz"
"""Per-network array metrics (circles, per-(a − b) accuracy), run axis in ``runs.csv`` order."""
HISTORY_FILE = "history.npz"
"""Training curves: ``step`` (n_logged,) and each of
:data:`~phasespace.training.step.HISTORY_FIELDS` (R, n_logged)."""
METRICS_HISTORY_FILE = "metrics_history.npz"
"""Every metric along training (``[analysis] every = N``): ``step`` (T,), metrics (R, T, ...)."""
PHASE_FILE = "phase.npz"
"""Phase-diagram arrays: over the grid axes (grid sweeps) and binned over (width, α), with α*."""
FIGURES_DIR = "figures"

History = tuple[list[int], Mapping[str, np.ndarray]]
"""The runs-table positions of a bucket's networks and that bucket's history arrays."""


def runs_columns(spec: SweepSpec) -> list[str]:
    """The columns of ``runs.csv`` of a sweep of ``spec``."""
    opts = CircuitOptions.from_mapping(spec.analysis)
    return [
        "index",
        "bucket",
        *AXES,
        *RUN_COLUMNS,
        *circuit_columns(opts.n_components // opts.min_circle_components),
    ]


def metric_values(
    scalars: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray], j: int
) -> dict[str, Any]:
    """The runs-table values of network ``j`` of an analysed population
    (:func:`~phasespace.analysis.circuits.analyze_full`): every scalar, every array metric (for
    ``analysis.npz``), and ``degenerate`` as flag names."""
    row: dict[str, Any] = {k: v[j] for k, v in scalars.items()}
    row.update({k: v[j] for k, v in arrays.items()})
    row["degenerate"] = describe_flags(int(scalars["degenerate"][j]))
    return row


def stack_padded(values: list[np.ndarray]) -> np.ndarray:
    """Stack arrays whose shapes may differ between buckets, padding with NaN (float) or −1."""
    shape = tuple(max(v.shape[d] for v in values) for d in range(values[0].ndim))
    kind = np.result_type(*values)
    fill = np.nan if np.issubdtype(kind, np.floating) else -1
    out = np.full((len(values), *shape), fill, dtype=kind)
    for i, v in enumerate(values):
        out[(i, *tuple(slice(0, s) for s in v.shape))] = v
    return out


def array_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Each array metric of the rows stacked (R, ...) (padded with NaN / −1 where buckets differ
    in shape); empty when the rows hold none."""
    names = [k for k, v in rows[0].items() if isinstance(v, np.ndarray) and v.ndim >= 1] if rows else []
    return {k: stack_padded([np.asarray(r[k]) for r in rows]) for k in names}


def write_array_metrics(path: str, rows: Sequence[Mapping[str, Any]], key: str = "index") -> None:
    """``analysis.npz``: :func:`array_metrics` with the rows' ``key`` column (R,) (not written
    without array metrics)."""
    arrays = array_metrics(rows)
    if arrays:
        store.write_npz(path, {key: np.asarray([r[key] for r in rows]), **arrays})


def write_history(path: str, n: int, histories: Sequence[History]) -> None:
    """``history.npz``: ``step`` and each training curve (n, n_logged) in runs-table order (NaN
    for networks of buckets logged at other steps)."""
    steps = histories[0][1]["step"]
    hist = {"step": steps}
    for k in HISTORY_FIELDS:
        arr = np.full((n, len(steps)), np.nan, np.float32)
        for idx, h in histories:
            if len(h["step"]) == len(steps):
                arr[idx] = h[k]
        hist[k] = arr
    store.write_npz(path, hist)


def write_metrics_history(path: str, n: int, tracked: Sequence[History]) -> None:
    """``metrics_history.npz``: ``step`` (T,) and each metric (n, T, ...) in runs-table order
    (NaN / −1 for networks of buckets recorded at other steps)."""
    steps = tracked[0][1]["step"]
    out: dict[str, np.ndarray] = {"step": steps}
    for name in tracked[0][1]:
        if name == "step":
            continue
        parts = [(idx, h[name]) for idx, h in tracked if name in h and np.array_equal(h["step"], steps)]
        sample = parts[0][1]
        fill = np.nan if np.issubdtype(sample.dtype, np.floating) else -1
        dtype = sample.dtype if fill == -1 else np.float32
        arr = np.full((n, *sample.shape[1:]), fill, dtype=dtype)
        for idx, v in parts:
            if v.shape[1:] == sample.shape[1:]:
                arr[idx] = v
        out[name] = arr
    store.write_npz(path, out)


def runs_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The rows as columns (R,) for the phase diagrams and figures (``bucket`` left out; a
    first-100%-test step of −1, never, as NaN)."""
    runs = {c: np.asarray([r.get(c, np.nan) for r in rows]) for c in columns if c != "bucket"}
    if "first_full_test_step" in runs:
        fft = runs["first_full_test_step"].astype(np.float64)
        runs["first_full_test_step"] = np.where(fft < 0, np.nan, fft)
    return runs


def _warn(what: str, e: Exception) -> None:
    warnings.warn(f"{what}: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=3)


def phase_arrays(spec: SweepSpec, runs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """Everything in ``phase.npz``: the binned arrays and transitions of
    :func:`phasespace.phase.diagram.phase_arrays` (``[phase]`` binning, ``[analysis]`` thresholds)
    and, for grid sweeps, :func:`~phasespace.phase.diagram.grid_arrays` over the grid axes.

    A part that fails leaves a RuntimeWarning naming it and is left out (a derived table is never
    worth the runs table). Returns ``(arrays, binned)``: ``binned`` is False when the binned
    diagram could not be computed."""
    arrays: dict[str, np.ndarray] = {}
    binned = False
    try:
        arrays.update(
            diagram.phase_arrays(runs, spec.phase, sampled=spec.sampled_axes, thresholds=spec.analysis)
        )
        binned = True
    except Exception as e:
        _warn("phase.npz: binned phase diagram not computed", e)
    if not spec.sampled_axes:
        try:
            arrays.update(diagram.grid_arrays(runs, [a for a in spec.grid_axes if a != "data_seed"]))
        except Exception as e:
            _warn("phase.npz: grid arrays not computed", e)
    return arrays, binned


def write_figures(
    out_dir: str,
    spec: SweepSpec,
    runs: Mapping[str, np.ndarray],
    arrays: Mapping[str, np.ndarray],
    binned: bool = True,
) -> None:
    """``figures/``: metrics against the attention rate (when some network has one) and the
    phase figures (when the binned diagram exists). A figure that fails leaves a warning naming
    it (:func:`phasespace.phase.figures.draw_safely`); the others are still drawn."""
    fig_dir = os.path.join(out_dir, FIGURES_DIR)
    n = len(runs["index"])
    if np.any(np.isfinite(np.asarray(runs["attention_rate"], dtype=np.float64))):
        figures.draw_safely(
            os.path.join(fig_dir, "metrics_vs_attention_rate.png"),
            figures.plot_metrics_vs_attention_rate,
            runs,
            title=f"{spec.name}: {n} networks",
            thresholds=spec.analysis,
        )
    if binned:
        try:
            figures.phase_figures(runs, arrays, fig_dir, spec.analysis, title=spec.name)
        except Exception as e:
            _warn("phase figures not drawn", e)


def write_results(
    out_dir: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    spec: SweepSpec | None,
    histories: Sequence[History] = (),
    key: str = "index",
) -> None:
    """Write every derived file of a sweep, each atomically: ``analysis.npz``, ``history.npz``
    and ``metrics_history.npz`` (from ``histories``, when given), ``phase.npz`` and the figures
    (when ``spec`` is known) and, last (it marks a finished sweep), ``runs.csv``.

    Args:
        out_dir: the sweep directory.
        rows: one dict per network in runs-table order: the ``columns`` values and the array
            metrics (see :func:`metric_values`).
        columns: the columns of ``runs.csv`` (:func:`runs_columns` for a new sweep).
        spec: the sweep's spec (its ``[phase]`` binning and ``[analysis]`` thresholds); None
            for a directory without ``spec.json`` (no phase arrays nor figures then).
        histories: per bucket, the runs-table positions of its networks and its training
            curves, with the metrics along training under ``"metrics_history"`` when recorded.
        key: the column naming the rows in ``analysis.npz`` (``run`` for reference checkpoints).
    """
    n = len(rows)
    if spec is not None:  # the class of every row under this spec's thresholds (a re-run may change them)
        classify.classify_rows(rows, spec.analysis)
    write_array_metrics(os.path.join(out_dir, ARRAYS_FILE), rows, key)
    tracked = [(idx, h["metrics_history"]) for idx, h in histories if "metrics_history" in h]
    if tracked:
        write_metrics_history(os.path.join(out_dir, METRICS_HISTORY_FILE), n, tracked)
    if histories:
        write_history(os.path.join(out_dir, HISTORY_FILE), n, histories)
    if spec is not None:
        runs = runs_table(rows, columns)
        arrays, binned = phase_arrays(spec, runs)
        store.write_npz(os.path.join(out_dir, PHASE_FILE), arrays)
        write_figures(out_dir, spec, runs, arrays, binned)
    store.write_csv(os.path.join(out_dir, RUNS_FILE), list(columns), rows)


def load_metrics_history(directory: str, upto: int) -> dict[str, np.ndarray]:
    """The metrics recorded along training saved beside a bucket's checkpoints, keeping steps
    ≤ ``upto`` (empty if none were saved)."""
    path = os.path.join(directory, METRICS_HISTORY_FILE)
    if not os.path.exists(path):
        return {"step": np.zeros(0, np.int64)}
    with np.load(path) as z:
        saved = {k: z[k] for k in z.files}
    keep = saved["step"] <= upto
    return {k: (v[keep] if k == "step" else v[:, keep]) for k, v in saved.items()}
