"""The one classifier (SPEC §5.3, §5.7): per-metric labels and the algorithm class built from them.

Everything that labels networks calls this module: the analysis of a population (the
``circular``, ``algorithm`` and ``algorithm_code`` columns of ``runs.csv``), the phase diagrams
and transition fits (:mod:`phasespace.phase.diagram`), their figures and the comparison with the
published tables. The thresholds are the ``[analysis]`` options named as in
:data:`phasespace.defaults.THRESHOLDS`.

NumPy only: labels are applied to finished tables, never inside a compiled program.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phasespace.defaults import (
    ALGORITHMS,
    CIRCULAR_THRESHOLD,
    DI_METRICS,
    DISTANCE_IRRELEVANCE_THRESHOLD,
    GRADIENT_SYMMETRICITY_THRESHOLD,
    THRESHOLDS,
)

LABELS: dict[str, tuple[str, str, str]] = {
    "symmetric": ("gradient_symmetricity", ">", "gradient_symmetricity_threshold"),
    "distance_dependent": ("distance_irrelevance", "<", "distance_irrelevance_threshold"),
    "distance_dependent_largest_wrong": (
        "distance_irrelevance_largest_wrong",
        "<",
        "distance_irrelevance_threshold",
    ),
}
"""Per-metric labels (SPEC §5.7): name → (metric, comparison, threshold option). Each is 1.0 on
the Pizza side, 0.0 on the Clock side, NaN where the metric is not finite."""

LABEL_OF_METRIC = {metric: name for name, (metric, _, _) in LABELS.items()}
"""Metric → the label defined on it."""

NOT_ADDITION_FLAG = "not_addition"
"""The flag of :data:`phasespace.analysis.faults.FLAGS` (in the ``degenerate`` column) of a network
whose labels are not (a + b) mod p: the Clock/Pizza classification is defined for addition only."""


def not_addition(runs: Mapping[str, Any]) -> np.ndarray:
    """Networks trained on an operation other than addition: bool (R,), True where the
    ``degenerate`` column (flag names joined by ``|``) holds :data:`NOT_ADDITION_FLAG`. Tables
    without that column (e.g. the published ones, all addition) have none."""
    n = len(np.asarray(next(iter(runs.values()))))
    if "degenerate" not in runs:
        return np.zeros(n, bool)
    return np.asarray([NOT_ADDITION_FLAG in str(v).split("|") for v in np.asarray(runs["degenerate"])], bool)


def thresholds(options: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The three label thresholds from ``options`` (e.g. a spec's ``[analysis]`` table; other
    keys are ignored), :data:`phasespace.defaults.THRESHOLDS` where missing.

    Raises:
        ValueError: naming the option, if a threshold is not a finite number.
    """
    out = dict(THRESHOLDS)
    for k in THRESHOLDS:
        if options is not None and k in options:
            v = options[k]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"{k}={v!r}: must be a finite number")
            if not math.isfinite(float(v)):
                raise ValueError(f"{k}={v!r}: must be a finite number")
            out[k] = float(v)
    return out


def circular_mask(circularity: Any, circular_threshold: float = CIRCULAR_THRESHOLD) -> np.ndarray:
    """Circular networks (SPEC §5.3): bool (R,), circularity ≥ ``circular_threshold`` (NaN → False)."""
    c = np.asarray(circularity, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(c) & (c >= circular_threshold)


def label(metric: str, values: Any, threshold: float) -> np.ndarray:
    """The label defined on ``metric`` (see :data:`LABELS`): float64 (R,), 1.0 on the Pizza side
    (``values`` compared with ``threshold``), 0.0 on the Clock side, NaN where not finite."""
    op = LABELS[LABEL_OF_METRIC[metric]][1]
    m = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        y = m > threshold if op == ">" else m < threshold
    return np.where(np.isfinite(m), y.astype(np.float64), np.nan)


def labels(
    runs: Mapping[str, Any],
    gradient_symmetricity_threshold: float = GRADIENT_SYMMETRICITY_THRESHOLD,
    distance_irrelevance_threshold: float = DISTANCE_IRRELEVANCE_THRESHOLD,
) -> dict[str, np.ndarray]:
    """Every label of :data:`LABELS` whose metric is in ``runs``: name → float64 (R,) (see
    :func:`label`)."""
    th = {
        "gradient_symmetricity_threshold": gradient_symmetricity_threshold,
        "distance_irrelevance_threshold": distance_irrelevance_threshold,
    }
    return {
        name: label(metric, runs[metric], th[key])
        for name, (metric, _, key) in LABELS.items()
        if metric in runs
    }


def algorithm(
    circularity: Any,
    gradient_symmetricity: Any,
    distance_irrelevance: Any,
    circular_threshold: float = CIRCULAR_THRESHOLD,
    gradient_symmetricity_threshold: float = GRADIENT_SYMMETRICITY_THRESHOLD,
    distance_irrelevance_threshold: float = DISTANCE_IRRELEVANCE_THRESHOLD,
    addition: Any = None,
) -> np.ndarray:
    """Algorithm class per network (SPEC §5.7), an index into :data:`~phasespace.defaults.ALGORITHMS`,
    built from the labels.

    non-circular (0) unless :func:`circular_mask`; among circular networks Pizza (1) iff both
    labels (``symmetric`` and the distance label of ``distance_irrelevance``, either variant) are
    1, Clock (2) iff both are 0, mixed (3) otherwise (one of each, or a label NaN). The classes
    are defined for addition: a network whose ``addition`` entry is False (bool (R,); None: all
    addition) is ``not-addition`` (6) whatever its metrics.

    Returns:
        int64 (R,).
    """
    sym = label("gradient_symmetricity", gradient_symmetricity, gradient_symmetricity_threshold)
    near = label("distance_irrelevance", distance_irrelevance, distance_irrelevance_threshold)
    code = np.full(sym.shape, 3, np.int64)
    code[(sym == 1.0) & (near == 1.0)] = 1
    code[(sym == 0.0) & (near == 0.0)] = 2
    code[~circular_mask(circularity, circular_threshold)] = 0
    if addition is not None:
        code[~np.asarray(addition, bool)] = ALGORITHMS.index("not-addition")
    return code


def algorithm_names(codes: Any) -> np.ndarray:
    """The names of algorithm codes (:data:`~phasespace.defaults.ALGORITHMS`): str (R,)."""
    return np.asarray([ALGORITHMS[int(c)] for c in np.asarray(codes).reshape(-1)])


def left_out(runs: Mapping[str, Any]) -> np.ndarray:
    """Networks whose final metrics do not describe a trained network: bool (R,), True where the
    network ``collapsed`` (its accuracy fell more than 0.1 below its best after reaching 0.99) or
    diverged (``nonfinite_step`` ≥ 0: frozen after a non-finite loss or update, its metrics
    come from its last finite parameters). They are left out of the phase diagram's cells and
    fits (counted per cell) and never labelled Clock or Pizza. So are networks of another
    operation than addition (:func:`not_addition`), for which the Clock/Pizza labels are not
    defined. Tables without those columns (e.g. the published ones) leave nothing out."""
    out = not_addition(runs)
    if "collapsed" in runs:
        out |= np.asarray(runs["collapsed"], dtype=bool)
    if "nonfinite_step" in runs:
        step = np.asarray(runs["nonfinite_step"], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            out |= np.isfinite(step) & (step >= 0)
    return out


def classify_rows(rows: Sequence[dict[str, Any]], options: Mapping[str, Any] | None = None) -> None:
    """Set ``circular``, ``algorithm_code`` and ``algorithm`` of runs-table rows, in place, from
    their metrics and the thresholds of ``options`` (a spec's ``[analysis]`` table: the label
    thresholds and ``di_metric``): the one place a row gets its class, so a finished sweep
    re-run with other thresholds, ``analyze`` and ``merge`` agree. Collapsed and diverged
    networks (:func:`left_out`) are ``"collapsed"`` / ``"diverged"``, never Clock or Pizza;
    networks of another operation than addition (the ``not_addition`` flag in their
    ``degenerate`` column, :func:`not_addition`) are ``"not-addition"`` unless collapsed or
    diverged."""
    if not rows:
        return
    th = thresholds(options)
    di_metric = (options or {}).get("di_metric", DI_METRICS[0])
    cols = {
        k: np.asarray([r.get(k, np.nan) for r in rows], dtype=np.float64)
        for k in ("circularity", "gradient_symmetricity", di_metric)
    }
    addition = ~not_addition({"degenerate": [r.get("degenerate", "") for r in rows]})
    code = algorithm(
        cols["circularity"], cols["gradient_symmetricity"], cols[di_metric], **th, addition=addition
    )
    circ = circular_mask(cols["circularity"], th["circular_threshold"])
    record = {
        k: np.asarray([r.get(k, v) for r in rows])
        for k, v in (("collapsed", False), ("nonfinite_step", np.nan))
    }
    diverged = left_out({"nonfinite_step": record["nonfinite_step"]})
    code = np.where(np.asarray(record["collapsed"], bool), ALGORITHMS.index("collapsed"), code)
    code = np.where(diverged, ALGORITHMS.index("diverged"), code)
    for r, cr, k in zip(rows, circ, code, strict=True):
        r["circular"] = bool(cr)
        r["algorithm_code"] = int(k)
        r["algorithm"] = ALGORITHMS[int(k)]
