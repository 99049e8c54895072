"""Phase diagrams (SPEC §6): metrics arranged over sweep axes, aggregated, classified.

Arrays are plain NumPy with named axes: an array ``X`` comes with a list of axis names and one
coordinate vector per axis (stored as ``axes`` and ``coord__<axis>`` in ``phase.npz``).

Network families are never pooled: the binned statistics and transitions of :func:`phase_arrays`
carry a leading ``family`` dimension (one entry per distinct combination of
:data:`FAMILY_AXES`), and the grid arrays of :func:`grid_arrays` are laid out over every grid
axis, family axes included.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phasespace.analysis import classify
from phasespace.spec.parse import MOVED_KEYS, PHASE_DEFAULTS, check_phase_options

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

    The arrays are laid out over every grid axis, so networks of different families (``model``,
    ``p``, … when they are grid axes) are never averaged together. Families without attention
    have ``attention_rate`` NaN: NaN is then one coordinate of that axis (sorted last).

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
        if n and axes:
            np.add.at(count, index, 1)
            arr[index] = vals
        elif n:  # no grid axis: a single network (0-d arrays)
            count[()] = n
            arr[()] = vals[-1]
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


# --------------------------------------------------------------------------------------------- #
# Binned phase diagrams over (width, attention rate), classification and transitions (SPEC §5.7, §6)

MAX_DISTINCT = 12
"""``"auto"`` binning uses one bin per distinct value up to this many distinct values."""

ALPHA_AXIS = "attention_rate"
WIDTH_AXIS = "d_model"
BIN_DIMS = (f"{WIDTH_AXIS}_bin", f"{ALPHA_AXIS}_bin")
"""The two binned axes of :func:`phase_arrays` (after its leading :data:`FAMILY_DIM`)."""

FAMILY_DIM = "family"
"""Leading dimension of the binned and transition arrays of :func:`phase_arrays`."""

FAMILY_AXES = ("model", "p", "n_layers", "act", "diff_vocab", "eqn_sign", "operation")
"""The columns that define a network family: networks differing in any of them are never
pooled into one phase statistic (``phase_arrays(group_by=...)``); in particular networks of
different operations (:mod:`phasespace.operations`) never are."""

SUBSETS = ("all", "circular")
"""Network subsets of the binned arrays: every network with finite metrics, and the circular
ones (circularity ≥ ``circular_threshold``, the filter of the paper's figures)."""

BIN_METRICS = (
    "gradient_symmetricity",
    "distance_irrelevance",
    "distance_irrelevance_largest_wrong",
    "circularity",
    "test_accuracy",
    "param_norm",
)
"""Metrics aggregated over the bins (when present), besides every label and ``circular``."""

STATS = ("mean", "std", "count", "nan")

TRANSITION_FIELDS = (
    "alpha_star",
    "se",
    "slope",
    "intercept",
    "p_value",
    "n",
    "n_positive",
    "n_skipped",
    "status",
)
"""Per family and width bin, from :func:`fit_transition`."""

STATUS = ("fitted", "no trend", "separable", "one class", "one α value", "too few", "failed")
"""The ``status`` names of a transition fit (stored by name, as strings, in ``phase.npz``):

* ``fitted``: α* = −intercept/slope with its delta-method standard error;
* ``no trend``: the slope is zero or not significantly different from 0 (likelihood-ratio
  p-value ≥ :data:`TREND_LEVEL`); α* NaN, the coefficients and p-value are reported;
* ``separable``: the classes are (quasi-)completely separated along α, so the maximum-likelihood
  fit does not exist; α* is the midpoint of the gap between the classes (the limit of the
  boundary as the fit diverges), se NaN;
* ``one class``: every label equal; ``one α value``: both classes but a single distinct α (no
  boundary can be placed); ``too few``: fewer than :data:`MIN_POINTS` networks; α* NaN;
* ``failed``: the fit raised or did not converge (a warning names the cause); α* NaN.
"""

TREND_LEVEL = 0.05
"""A fit whose slope has a likelihood-ratio p-value ≥ this is reported as ``"no trend"``."""

STATUS_MEANING = {
    "fitted": "logistic fit of the label on α: α* ± standard error",
    "no trend": "no significant dependence of the label on α; α* not estimated",
    "separable": "the labels split along α (overlapping at one α value at most), so no finite fit "
    "exists; α* is where the boundary tends to: the middle of the gap, or the shared α",
    "one class": "every network has the same label; no α*",
    "one α value": "every network has the same α; no α*",
    "too few": "fewer than two networks; no α*",
    "failed": "the fit did not converge; no α*",
}
"""One line per :data:`STATUS` name, for printed legends."""

METRIC_NAMES = {
    "gradient_symmetricity": "gradient symmetricity",
    "distance_irrelevance": "distance irrelevance",
    "distance_irrelevance_largest_wrong": "distance irrelevance (largest wrong logit)",
    "circularity": "circularity",
    "circular": "circular fraction",
    "test_accuracy": "test accuracy",
    "param_norm": "parameter norm",
}
"""Printed names of the binned metrics (full names, no abbreviations)."""


def label_legend(thresholds: Mapping[str, Any] | None = None) -> list[str]:
    """What each label of :data:`phasespace.analysis.classify.LABELS` means, with its threshold
    (``thresholds``: e.g. a spec's ``[analysis]`` options; defaults where missing), and what the
    subsets are: lines for printed tables (``phasespace run``, ``compare``)."""
    th = classify.thresholds(thresholds)
    lines = [
        f"  {name} = {METRIC_NAMES[metric]} {op} {th[key]:g} (the Pizza side)"
        for name, (metric, op, key) in classify.LABELS.items()
    ]
    lines.append(
        f"  all = every network with finite metrics; circular = circularity ≥ {th['circular_threshold']:g}"
    )
    return lines


def status_legend(statuses: Sequence[str] = STATUS) -> list[str]:
    """One line per status in ``statuses`` (those that occur in a printed table)."""
    return [f"  {st}: {STATUS_MEANING[st]}" for st in STATUS if st in set(statuses)]


MIN_POINTS = 2
"""Fewer networks than this in a bin: status ``"too few"``."""

EDGE_TOL = 1e-9
"""Relative tolerance of :func:`bin_index`: a value less than ``EDGE_TOL · (edges[-1] −
edges[0])`` below an edge counts as on the edge."""


def _distinct_edges(values: np.ndarray, log: bool) -> tuple[np.ndarray, np.ndarray]:
    v = np.unique(values)
    if len(v) == 1:
        return np.asarray([v[0], v[0]], dtype=np.float64), v.astype(np.float64)
    mid = np.sqrt(v[1:] * v[:-1]) if log else (v[1:] + v[:-1]) / 2
    return np.concatenate([[v[0]], mid, [v[-1]]]).astype(np.float64), v.astype(np.float64)


def bin_edges(values: np.ndarray, spec: Any, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and coordinates for one axis.

    Bin i holds values in [edges[i], edges[i+1]); the last bin also holds edges[-1] (see
    :func:`bin_index` for the tolerance at the edges). n equal bins have edges k/n computed as
    ``arange(n + 1) / n``, so an attention rate written as 0.3 is exactly on edge 3 of 10.

    Args:
        values: (R,) the axis values of the networks (NaNs ignored).
        spec: ``"auto"``, ``"distinct"``, ``"octave"`` (widths), an int (n equal bins on
            [0, 1], attention rate) or a sequence of edges (see :data:`phasespace.spec.parse.PHASE_DEFAULTS`).
        axis: ``"attention_rate"`` (linear) or ``"d_model"`` (logarithmic centres).

    Returns:
        ``(edges, coords)``: float64 (n+1,) and (n,): bin centres (geometric for widths), or the
        values themselves for ``"distinct"`` bins.

    Raises:
        ValueError: if there are no finite values for a data-dependent ``spec``.
    """
    log = axis == WIDTH_AXIS
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if isinstance(spec, str) and spec in ("auto", "distinct", "octave") and v.size == 0:
        raise ValueError(f"{axis}: no finite values to bin")
    spec = resolve_bins(v, spec, axis)
    if spec == "distinct":
        return _distinct_edges(v, log)
    if spec == "octave":
        lo = int(np.floor(np.log2(v.min())))
        hi = int(np.floor(np.log2(v.max()))) + 1
        edges = 2.0 ** np.arange(lo, hi + 1)
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        n = int(spec)  # integer arithmetic: edge k is k/n, the double nearest to k/n
        edges = np.arange(n + 1, dtype=np.float64) / n
    else:
        edges = np.asarray(spec, dtype=np.float64)
    coords = np.sqrt(edges[1:] * edges[:-1]) if log else (edges[1:] + edges[:-1]) / 2
    return edges, coords


def resolve_bins(values: np.ndarray, spec: Any, axis: str) -> Any:
    """``"auto"`` binning made concrete: ``"distinct"`` if ``values`` (NaNs ignored) hold at most
    :data:`MAX_DISTINCT` distinct values, else ``"octave"`` (d_model) or 10 (attention rate);
    any other ``spec`` is returned unchanged."""
    if not (isinstance(spec, str) and spec == "auto"):
        return spec
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(np.unique(v)) <= MAX_DISTINCT:
        return "distinct"
    return "octave" if axis == WIDTH_AXIS else 10


def bin_label(arrays: Mapping[str, np.ndarray], dim: str, i: int) -> str:
    """Readable name of bin ``i`` of axis ``dim`` of :func:`phase_arrays`: the value for
    distinct-value bins, ``lo–hi`` (inclusive integer range, e.g. ``32–63``) for integer
    edges, else ``lo–hi`` of the edges."""
    opts = json.loads(str(arrays["options"])) if "options" in arrays else {}
    key = "width_bins" if dim.startswith(WIDTH_AXIS) else "alpha_bins"
    if opts.get(key) == "distinct":
        return f"{float(arrays[f'coord__{dim}'][i]):.4g}"
    edges = arrays[f"edges__{dim}"]
    lo, hi = float(edges[i]), float(edges[i + 1])
    if lo == hi:
        return f"{lo:.4g}"
    if dim.startswith(WIDTH_AXIS) and lo.is_integer() and hi.is_integer():
        return f"{int(lo)}–{int(hi) - 1}"
    return f"{lo:.4g}–{hi:.4g}"


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value: int64 (R,), −1 outside the edges or NaN.

    The rule: with ``tol = EDGE_TOL · (edges[-1] − edges[0])``, value v is in bin i iff
    ``edges[i] − tol ≤ v < edges[i+1] − tol`` (half-open bins; a value within ``tol`` below an
    edge counts as on it, so 0.3, 3·0.1 = 0.30000000000000004 and 0.7 − 0.4 =
    0.29999999999999993 all land in the bin starting at 0.3), and the last bin is closed: it also
    holds ``edges[-1] − tol ≤ v ≤ edges[-1] + tol``. With 10 equal bins on [0, 1], α = 0, 0.1, …,
    0.8 land one per bin 0…8 and bin 9 holds 0.9 and 1.0.
    """
    v = np.asarray(values, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    n = len(e) - 1
    tol = EDGE_TOL * float(e[-1] - e[0])
    idx = np.searchsorted(e - tol, v, side="right") - 1
    idx = np.where((idx == n) & (v <= e[-1] + tol), n - 1, idx)
    return np.where(np.isfinite(v) & (idx >= 0) & (idx < n), idx, -1).astype(np.int64)


def binned_stats(
    values: np.ndarray, index: Sequence[np.ndarray], shape: Sequence[int]
) -> dict[str, np.ndarray]:
    """NaN-skipping mean, std, count and skipped-NaN count of ``values`` over bins.

    Args:
        values: (R,) float.
        index: one int array (R,) per binned axis (−1: the network is in no bin).
        shape: number of bins per axis.

    Returns:
        dict ``mean``, ``std`` (population std, ddof 0) float64 and ``count`` (finite values
        used), ``nan`` (non-finite values skipped) int64, each of shape ``shape``; NaN mean/std
        where count = 0.
    """
    v = np.asarray(values, dtype=np.float64)
    inside = np.all([i >= 0 for i in index], axis=0) if index else np.ones(v.shape, bool)
    finite = np.isfinite(v)
    flat = np.ravel_multi_index(tuple(np.where(inside, i, 0) for i in index), tuple(shape))
    size = int(np.prod(shape))
    use = inside & finite
    cnt = np.bincount(flat[use], minlength=size)
    s1 = np.bincount(flat[use], weights=v[use], minlength=size)
    nan = np.bincount(flat[inside & ~finite], minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        dev = np.where(use, v - mean[flat], 0.0)
        var = np.bincount(flat[use], weights=dev[use] ** 2, minlength=size) / cnt
    return {
        "mean": mean.reshape(shape),
        "std": np.sqrt(var).reshape(shape),
        "count": cnt.reshape(shape).astype(np.int64),
        "nan": nan.reshape(shape).astype(np.int64),
    }


@dataclasses.dataclass(frozen=True)
class Transition:
    """A transition fit: P(label = 1 | α) = σ(intercept + slope · α) (SPEC §5.7, §6).

    Attributes:
        alpha_star: α* with P = 0.5, −intercept/slope (status ``"fitted"``); for ``"separable"``
            the midpoint of the gap between the classes; NaN otherwise.
        se: standard error of α* by the delta method from the fit's covariance (the inverse
            Fisher information); NaN unless fitted.
        slope, intercept: the maximum-likelihood coefficients (``"fitted"`` and ``"no trend"``;
            NaN otherwise).
        p_value: likelihood-ratio p-value of slope = 0 (``"fitted"`` and ``"no trend"``).
        n: networks used (finite label and α); n_positive: of them with label 1;
        n_skipped: networks dropped for a NaN label or α.
        status: one of :data:`STATUS`.
    """

    alpha_star: float
    se: float
    slope: float
    intercept: float
    p_value: float
    n: int
    n_positive: int
    n_skipped: int
    status: str


def fit_transition(alpha: np.ndarray, label: np.ndarray, level: float = TREND_LEVEL) -> Transition:
    """Unregularised logistic regression of a 0/1 label on the attention rate (SPEC §6).

    Fitted with :class:`statsmodels.discrete.discrete_model.Logit` (Newton, float64); α* =
    −intercept/slope and its standard error by the delta method. Networks with a NaN label or α
    are skipped (``n_skipped``). Cases where α* cannot be computed are not errors: they return
    NaN with a named status (:data:`STATUS`), checked in this order: ``"too few"`` (<
    :data:`MIN_POINTS` networks), ``"one class"``, ``"one α value"``, ``"separable"`` (every
    label-1 α ≤ every label-0 α or the reverse: the MLE does not exist; α* is the midpoint of the
    gap), then the fit: ``"no trend"`` when the slope is 0 or its likelihood-ratio p-value is
    ≥ ``level``, ``"failed"`` (with a warning) if statsmodels raises or does not converge.

    Args:
        alpha: (R,) attention rates.
        label: (R,) 0.0 / 1.0 / NaN.
        level: significance level of the slope (likelihood-ratio test against a constant).

    Returns:
        :class:`Transition`; never raises for any input of matching length.
    """
    x = np.asarray(alpha, dtype=np.float64).ravel()
    y = np.asarray(label, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    skipped = int(np.sum(~ok))
    x, y = x[ok], y[ok]
    n, npos = len(x), int(np.sum(y == 1))
    nan = float("nan")

    def result(status: str, a_star: float = nan, se: float = nan, b1: float = nan, b0: float = nan,
               pv: float = nan) -> Transition:  # fmt: skip
        return Transition(float(a_star), float(se), float(b1), float(b0), float(pv), n, npos, skipped, status)

    if n < MIN_POINTS:
        return result("too few")
    if npos in (0, n):
        return result("one class")
    if np.all(x == x[0]):
        return result("one α value")
    x1, x0 = x[y == 1], x[y == 0]
    if x1.max() <= x0.min() or x0.max() <= x1.min():
        lo, hi = (x1.max(), x0.min()) if x1.max() <= x0.min() else (x0.max(), x1.min())
        return result("separable", a_star=(lo + hi) / 2)
    from statsmodels.discrete.discrete_model import Logit

    X = np.stack([np.ones_like(x), x], axis=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = Logit(y, X).fit(method="newton", maxiter=100, disp=0)
        b0, b1 = (float(c) for c in fit.params)
        cov = np.asarray(fit.cov_params(), dtype=np.float64)
        pv = float(fit.llr_pvalue)
        converged = bool(fit.mle_retvals.get("converged", False))
    except Exception as e:  # a fit that cannot be made is a status, not a crash
        warnings.warn(
            f"transition fit failed ({n} networks): {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2
        )
        return result("failed")
    if not converged or not (np.isfinite(b0) and np.isfinite(b1)):
        warnings.warn(f"transition fit did not converge ({n} networks)", RuntimeWarning, stacklevel=2)
        return result("failed")
    if b1 == 0.0 or not pv < level:
        return result("no trend", b1=b1, b0=b0, pv=pv)
    grad = np.asarray([-1.0 / b1, b0 / b1**2])
    var = float(grad @ cov @ grad)
    se = np.sqrt(var) if np.isfinite(var) and var >= 0 else nan
    return result("fitted", a_star=-b0 / b1, se=se, b1=b1, b0=b0, pv=pv)


def family_index(
    runs: Mapping[str, np.ndarray], group_by: Sequence[str] = FAMILY_AXES
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The network family of every row: the distinct combinations of the ``group_by`` columns.

    Columns of ``group_by`` absent from ``runs`` are ignored (e.g. ``model`` in a published table).

    Returns:
        ``(index, families)``: int64 (R,) family of each row, and ``families`` with ``axes`` (the
        grouping columns used, str), ``label`` (G,) str (``"model=transformer p=59 …"``; ``"all"``
        when nothing is grouped on) and, per grouping column c, ``c`` (G,) its value. Families are
        in sorted order of their values (the order is a function of the set of families only).
    """
    cols = [c for c in group_by if c in runs]
    n = len(runs[ALPHA_AXIS]) if ALPHA_AXIS in runs else len(next(iter(runs.values())))
    fam: dict[str, np.ndarray] = {"axes": np.asarray(cols, dtype=str)}
    if not cols:
        fam["label"] = np.asarray(["all"])
        return np.zeros(n, np.int64), fam
    uniq, codes = [], []
    for c in cols:
        u, inv = np.unique(np.asarray(runs[c]), return_inverse=True)
        uniq.append(u)
        codes.append(inv.ravel())
    combos, index = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    for j, c in enumerate(cols):
        fam[c] = uniq[j][combos[:, j]]
    fam["label"] = np.asarray(
        [" ".join(f"{c}={_fmt_value(fam[c][g])}" for c in cols) for g in range(len(combos))], dtype=str
    )
    return index.ravel().astype(np.int64), fam


def _fmt_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def phase_arrays(
    runs: Mapping[str, np.ndarray],
    options: Mapping[str, Any] | None = None,
    sampled: Sequence[str] = (),
    group_by: Sequence[str] = FAMILY_AXES,
    thresholds: Mapping[str, Any] | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    circular: np.ndarray | None = None,
) -> dict:
    """Binned phase diagram over (width, attention rate) with classification and transitions,
    computed separately for every network family.

    Works for grid and sampled sweeps alike (and for published tables normalised by
    :func:`phasespace.phase.compare.load_table`).

    Args:
        runs: per-network columns (R,): ``d_model``, ``attention_rate`` (NaN for families without
            attention: such networks fall in no α bin and are counted in ``n_skipped``),
            ``circularity``, any of :data:`BIN_METRICS` and the ``group_by`` columns present.
        options: :data:`phasespace.spec.parse.PHASE_DEFAULTS` fields (missing ones take the defaults).
        sampled: axes drawn from a distribution; for them ``"auto"`` binning never uses
            distinct values (octaves for d_model, 10 bins for the attention rate).
        group_by: the columns whose distinct combinations are the families
            (:func:`family_index`); ``()`` pools every network into one family ``"all"``.
        thresholds: the label thresholds, e.g. a spec's ``[analysis]`` options (other keys are
            ignored; :func:`phasespace.analysis.classify.thresholds`).
        labels: the 0/1/NaN label columns (name → (R,)) to bin and fit; default
            :func:`phasespace.analysis.classify.labels` of ``runs`` with ``thresholds``.
        circular: bool (R,), the ``circular`` subset; default
            :func:`phasespace.analysis.classify.circular_mask` with ``thresholds``.

    Returns:
        dict of arrays for ``phase.npz``, each kind with its axis names under ``dims__<kind>``:

        * families (G of them): ``coord__family`` (G,) str labels (``"model=transformer p=23
          n_layers=1 act=relu diff_vocab=false eqn_sign=false"``), ``family__<column>`` (G,) the
          value of each grouping column, ``family_axes`` the grouping columns, and
          ``family__networks`` (G,) networks per family (dims ``dims__family``);
        * ``coord__d_model_bin``, ``edges__d_model_bin`` (n_w,), (n_w + 1,); the same for
          ``attention_rate_bin`` (n_a,); the bins are shared by every family;
        * ``binned__<subset>__<metric>__<stat>`` (G, n_w, n_a), dims ``("family",
          "d_model_bin", "attention_rate_bin")`` (``dims__binned``), for subset in
          :data:`SUBSETS`, every present metric of :data:`BIN_METRICS`, every label of
          :func:`phasespace.analysis.classify.labels` and ``circular`` (labels and ``circular``
          as 0/1, so their mean is the fraction), stat in :data:`STATS`;
        * ``transition__<subset>__<label>__<field>`` (G, n_w), dims ``("family",
          "d_model_bin")`` (``dims__transition``), field in :data:`TRANSITION_FIELDS`, from
          :func:`fit_transition` of the label on α within each family and width bin
          (``status`` as a str array of :data:`STATUS` names);
        * ``binned__left_out__count`` (G, n_w, n_a): networks left out of every cell and fit
          because they collapsed or diverged, or were trained on another operation than
          addition (:func:`phasespace.analysis.classify.left_out`);
        * ``options`` (JSON string of the binning options and thresholds used).
    """
    opts = dict(PHASE_DEFAULTS)
    for k, v in (options or {}).items():
        if k not in PHASE_DEFAULTS:
            moved = MOVED_KEYS.get(f"phase.{k}")
            raise ValueError(f"phase.{k}: " + (f"moved to {moved}" if moved else "not a binning option"))
        opts[k] = v
    check_phase_options(opts)
    th = classify.thresholds(thresholds)
    width = np.asarray(runs[WIDTH_AXIS], dtype=np.float64)
    alpha = np.asarray(runs[ALPHA_AXIS], dtype=np.float64)
    if WIDTH_AXIS in sampled and opts["width_bins"] == "auto":
        opts["width_bins"] = "octave"
    if ALPHA_AXIS in sampled and opts["alpha_bins"] == "auto":
        opts["alpha_bins"] = 10
    opts["width_bins"] = resolve_bins(width, opts["width_bins"], WIDTH_AXIS)
    opts["alpha_bins"] = resolve_bins(alpha, opts["alpha_bins"], ALPHA_AXIS)
    w_edges, w_coord = bin_edges(width, opts["width_bins"], WIDTH_AXIS)
    a_edges, a_coord = _alpha_edges(alpha, opts["alpha_bins"])
    wi, ai = bin_index(width, w_edges), bin_index(alpha, a_edges)
    fam, families = family_index(runs, group_by)
    n_fam = len(families["label"])
    shape = (n_fam, len(w_coord), len(a_coord))
    out: dict[str, np.ndarray] = {
        "dims__binned": np.asarray((FAMILY_DIM, *BIN_DIMS)),
        "dims__transition": np.asarray((FAMILY_DIM, BIN_DIMS[0])),
        f"coord__{FAMILY_DIM}": families["label"],
        "family_axes": families["axes"],
        "family__networks": np.bincount(fam, minlength=n_fam).astype(np.int64),
        "dims__family": np.asarray(["family"]),
        f"coord__{BIN_DIMS[0]}": w_coord,
        f"edges__{BIN_DIMS[0]}": w_edges,
        f"coord__{BIN_DIMS[1]}": a_coord,
        f"edges__{BIN_DIMS[1]}": a_edges,
        "options": np.asarray(json.dumps({**opts, **th}, sort_keys=True)),
    }
    for c in families["axes"]:
        out[f"family__{c}"] = families[str(c)]
    if circular is None:
        circ = classify.circular_mask(runs["circularity"], th["circular_threshold"])
    else:
        circ = np.asarray(circular, bool)
    if labels is None:
        labels = classify.labels(
            runs, th["gradient_symmetricity_threshold"], th["distance_irrelevance_threshold"]
        )
    labels = {k: np.asarray(v, dtype=np.float64) for k, v in labels.items()}
    cols: dict[str, np.ndarray] = {m: np.asarray(runs[m], dtype=np.float64) for m in BIN_METRICS if m in runs}
    cols.update(labels)
    circ_col = np.where(np.isfinite(np.asarray(runs["circularity"], dtype=np.float64)), circ, np.nan)
    cols["circular"] = circ_col.astype(np.float64)
    left = classify.left_out(runs)  # collapsed / diverged / not addition: out of every cell and fit, counted
    ok = (wi >= 0) & (ai >= 0)
    left_count = np.zeros(shape, np.int64)
    np.add.at(left_count, (fam[left & ok], wi[left & ok], ai[left & ok]), 1)
    out["binned__left_out__count"] = left_count
    for subset in SUBSETS:
        sel = ~left if subset == "all" else circ & ~left
        idx = (fam, np.where(sel, wi, -1), ai)
        for m, v in cols.items():
            for stat, arr in binned_stats(v, idx, shape).items():
                out[f"binned__{subset}__{m}__{stat}"] = arr
        for name, y in labels.items():
            fits = [
                [
                    fit_transition(alpha[m], y[m])
                    for m in (sel & (fam == g) & (wi == b) for b in range(shape[1]))
                ]
                for g in range(n_fam)
            ]
            for field in TRANSITION_FIELDS:
                vals = [[getattr(t, field) for t in row] for row in fits]
                out[f"transition__{subset}__{name}__{field}"] = np.asarray(
                    vals, dtype=str if field == "status" else None
                ).reshape(shape[:2])
    return out


def _alpha_edges(alpha: np.ndarray, spec: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bin_edges` of the attention rate; with no finite α at all (every family without
    attention) one empty bin [0, 1] instead of an error."""
    if isinstance(spec, str) and not np.any(np.isfinite(alpha)):
        return np.asarray([0.0, 1.0]), np.asarray([0.5])
    return bin_edges(alpha, spec, ALPHA_AXIS)


def family_slugs(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """A short file-name-safe name per family of :func:`phase_arrays`, from the grouping
    columns that differ between families (``""`` when there is a single family)."""
    labels = [str(x) for x in arrays.get(f"coord__{FAMILY_DIM}", np.asarray(["all"]))]
    if len(labels) <= 1:
        return [""] * len(labels)
    axes = [str(c) for c in arrays.get("family_axes", [])]
    varying = [c for c in axes if len({str(v) for v in arrays[f"family__{c}"]}) > 1]
    slugs = []
    for g in range(len(labels)):
        parts = [f"{c}-{_fmt_value(arrays[f'family__{c}'][g])}" for c in varying] or [f"f{g}"]
        slugs.append("_".join(parts).replace("/", "-").replace(" ", ""))
    return slugs


def named(arrays: Mapping[str, np.ndarray], name: str) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """An array of :func:`phase_arrays` with its axis names and coordinates.

    Raises:
        KeyError: if ``name`` or its ``dims__<family>`` entry is missing.
    """
    family = name.split("__")[0]
    if name not in arrays:
        raise KeyError(f"{name!r} not in phase arrays; available: {sorted(arrays)}")
    dims = [str(a) for a in arrays[f"dims__{family}"]]
    return arrays[name], dims, {a: arrays[f"coord__{a}"] for a in dims}


def families_without_alpha(arrays: Mapping[str, np.ndarray]) -> list[int]:
    """Indices of the families (``coord__family``) with no network in any α* cell of any
    subset and label (``transition__*__n`` all 0): a model without attention, an operation
    other than addition, or every network left out. Their tables hold nothing but "too few";
    the printout and the report name them once instead."""
    keys = [k for k in arrays if k.startswith("transition__") and k.endswith("__n")]
    if not keys:
        return []
    return [g for g in range(arrays[keys[0]].shape[0]) if not any(np.any(arrays[k][g] > 0) for k in keys)]


NO_ALPHA_NOTE = (
    "no α* (no network in any width bin: a model without attention, an operation other than "
    "addition, or every network left out as collapsed/diverged/non-finite) for:"
)


def format_transitions(
    arrays: Mapping[str, np.ndarray],
    subsets: Sequence[str] = SUBSETS,
    labels: Sequence[str] = ("symmetric", "distance_dependent_largest_wrong"),
) -> str:
    """α* per family and width bin as text (``phasespace run`` prints it): a block per family,
    one line per width bin, one column per subset and label (named as in ``phase.npz``,
    ``transition__<subset>__<label>__*``), each cell ``α* ± se (n networks)``, ``α* separable
    (n)`` or ``— <status> (n)``; families without a single network in any cell (models without
    attention, other operations) are listed in one line instead; followed by a legend of the
    labels (with the thresholds in ``arrays["options"]``) and of the statuses that occur."""
    edges = arrays[f"edges__{BIN_DIMS[0]}"]
    families = [str(x) for x in arrays.get(f"coord__{FAMILY_DIM}", np.asarray(["all"]))]
    labels = [k for k in labels if f"transition__all__{k}__alpha_star" in arrays]
    cols = [(s, k) for s in subsets for k in labels]
    width = max([36] + [len(f"{s}: {k}") for s, k in cols])
    head = f"{'d_model':>12} " + " ".join(f"{s + ': ' + k:>{width}}" for s, k in cols)
    lines = ["transition attention rate α* per width bin (label probability 0.5 in a logistic fit on α)"]
    seen: set[str] = set()
    skip = families_without_alpha(arrays)
    for g, fam in enumerate(families):
        if g in skip:  # named once below
            continue
        lines.append(f"family {fam}:")
        lines.append(head)
        for b in range(len(edges) - 1):
            name = bin_label(arrays, BIN_DIMS[0], b)
            cells = []
            for s, k in cols:
                key = f"transition__{s}__{k}"
                a, se, n, st = (arrays[f"{key}__{f}"][g, b] for f in ("alpha_star", "se", "n", "status"))
                st = str(st)
                seen.add(st)
                if st == "fitted":
                    cell = f"{a:.3f} ± {se:.3f} ({int(n)} networks)"
                elif st == "separable":
                    cell = f"{a:.3f} separable ({int(n)} networks)"
                else:
                    cell = f"— {st} ({int(n)} networks)"
                cells.append(f"{cell:>{width}}")
            lines.append(f"{name:>12} " + " ".join(cells))
    if skip:
        lines.append(NO_ALPHA_NOTE)
        lines.extend(f"  family {families[g]}" for g in skip)
    options = json.loads(str(arrays["options"])) if "options" in arrays else None
    lines.append("labels:")
    lines.extend(label_legend(options))
    lines.append("status:")
    lines.extend(status_legend(sorted(seen)))
    return "\n".join(lines)
