"""Phase diagrams (SPEC §6): metrics arranged over sweep axes, aggregated, classified.

Arrays are plain NumPy with named axes: an array ``X`` comes with a list of axis names and one
coordinate vector per axis (stored as ``axes`` and ``coord__<axis>`` in ``phase.npz``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PHASE_METRICS = (
    "gradient_symmetricity",
    "distance_irrelevance",
    "distance_irrelevance_largest_wrong",
    "circularity",
    "train_accuracy",
    "test_accuracy",
    "accuracy",
    "param_norm",
    "train_loss",
    "test_loss",
    "first_full_test_step",
)
"""Metrics laid out as phase-diagram arrays."""

REDUCE_AXIS = "seed"


def grid_arrays(
    runs: Mapping[str, np.ndarray],
    axes: Sequence[str],
    metrics: Sequence[str] = PHASE_METRICS,
    reduce_axis: str = REDUCE_AXIS,
) -> dict[str, np.ndarray]:
    """Lay a grid sweep's per-network table out as arrays over its grid axes.

    Args:
        runs: the runs table as columns of shape (R,) (must hold every name in ``axes`` and
            ``metrics``; missing metrics are skipped).
        axes: the grid axes (e.g. ``["attention_rate", "seed"]``); may be empty.
        metrics: columns to lay out.
        reduce_axis: axis averaged over for the ``__mean``/``__std``/``__count``/``__nan``
            arrays (usually ``seed``); if absent, the reduced arrays equal the full ones.

    Returns:
        dict with ``axes`` (str array), ``coord__<axis>`` (sorted unique values), each metric
        as an array of shape ``[len(coord) for axis in axes]`` (NaN where no network), and, over
        ``axes_reduced`` (``axes`` without ``reduce_axis``): ``<metric>__mean`` and
        ``<metric>__std`` (NaN-skipping, population std), ``<metric>__count`` (finite values
        used) and ``<metric>__nan`` (NaN values skipped).
    """
    axes = list(axes)
    coords = {a: np.unique(np.asarray(runs[a])) for a in axes}
    shape = tuple(len(coords[a]) for a in axes)
    index = tuple(np.searchsorted(coords[a], np.asarray(runs[a])) for a in axes)
    out: dict[str, np.ndarray] = {"axes": np.asarray(axes, dtype=str)}
    for a in axes:
        out[f"coord__{a}"] = coords[a]
    reduced = [a for a in axes if a != reduce_axis]
    out["axes_reduced"] = np.asarray(reduced, dtype=str)
    n = len(next(iter(runs.values()))) if runs else 0
    for m in metrics:
        if m not in runs:
            continue
        vals = np.asarray(runs[m], dtype=np.float64)
        arr = np.full(shape, np.nan)
        count = np.zeros(shape, dtype=np.int64)
        if n:
            np.add.at(count, index if axes else (), 1)
            arr[index if axes else ()] = vals
        if np.any(count > 1):
            dup = np.argwhere(count > 1)[0]
            raise ValueError(
                f"axes={axes}: several networks share the grid point "
                f"{ {a: coords[a][i] for a, i in zip(axes, dup, strict=True)} }; add the axis that "
                "tells them apart"
            )
        out[m] = arr
        if reduce_axis in axes:
            ax = axes.index(reduce_axis)
            finite = np.isfinite(arr)
            cnt = finite.sum(axis=ax)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(finite, arr, 0.0).sum(axis=ax) / cnt
                var = np.where(finite, (arr - np.expand_dims(mean, ax)) ** 2, 0.0).sum(axis=ax) / cnt
            out[f"{m}__mean"] = mean
            out[f"{m}__std"] = np.sqrt(var)
            out[f"{m}__count"] = cnt
            out[f"{m}__nan"] = ((count > 0) & ~finite).sum(axis=ax)
        else:
            out[f"{m}__mean"] = arr
            out[f"{m}__std"] = np.zeros_like(arr)
            out[f"{m}__count"] = np.isfinite(arr).astype(np.int64)
            out[f"{m}__nan"] = ((count > 0) & ~np.isfinite(arr)).astype(np.int64)
    return out
