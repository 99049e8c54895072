"""Phase diagrams (SPEC §6): metrics arranged over sweep axes, aggregated, classified.

Arrays are plain NumPy with named axes: an array ``X`` comes with a list of axis names and one
coordinate vector per axis (stored as ``axes`` and ``coord__<axis>`` in ``phase.npz``).
"""

from __future__ import annotations

import dataclasses
import json
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
"""Axis names of the binned arrays (``binned__*``) of :func:`phase_arrays`."""

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

TRANSITION_FIELDS = ("alpha_star", "se", "slope", "intercept", "n", "n_positive", "n_skipped", "status")
"""Per width bin, from :func:`fit_transition`."""

STATUS = {0: "fitted", 1: "separable", 2: "one class", 3: "too few"}
"""``status`` codes of a transition fit."""


def _distinct_edges(values: np.ndarray, log: bool) -> tuple[np.ndarray, np.ndarray]:
    v = np.unique(values)
    if len(v) == 1:
        return np.asarray([v[0], v[0]], dtype=np.float64), v.astype(np.float64)
    mid = np.sqrt(v[1:] * v[:-1]) if log else (v[1:] + v[:-1]) / 2
    return np.concatenate([[v[0]], mid, [v[-1]]]).astype(np.float64), v.astype(np.float64)


def bin_edges(values: np.ndarray, spec: Any, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and coordinates for one axis.

    Bin i holds values in [edges[i], edges[i+1]); the last bin also holds edges[-1].

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
        edges = np.linspace(0.0, 1.0, int(spec) + 1)
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
    """Bin of each value: int64 (R,), i with edges[i] ≤ v < edges[i+1] (the last bin closed),
    −1 outside the edges or NaN."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(edges, v, side="right") - 1
    n = len(edges) - 1
    idx = np.where(v == edges[-1], n - 1, idx)
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
    """A fitted transition: P(label = 1 | α) = σ(intercept + slope · α) (SPEC §5.7, §6).

    Attributes:
        alpha_star: α* with P = 0.5, −intercept/slope (for ``status`` "separable": the midpoint
            of the gap between the classes, the limit of the boundary as the unregularised fit
            diverges); NaN for "one class" / "too few".
        se: standard error of α* by the delta method from the inverse Fisher information (NaN
            unless fitted).
        slope, intercept: the coefficients (NaN unless fitted).
        n: networks used (finite label and α); n_positive: of them with label 1;
        n_skipped: networks dropped for a NaN label or α.
        status: 0 fitted, 1 separable, 2 one class, 3 too few (< 2 networks); see :data:`STATUS`.
    """

    alpha_star: float
    se: float
    slope: float
    intercept: float
    n: int
    n_positive: int
    n_skipped: int
    status: int


def _nll(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    z = w[0] + w[1] * x
    return float(np.sum(np.logaddexp(0.0, z) - y * z))


def fit_transition(alpha: np.ndarray, label: np.ndarray, max_iter: int = 200) -> Transition:
    """Unregularised logistic regression of a 0/1 label on the attention rate (SPEC §6).

    Maximum likelihood by Newton's method with step halving (IRLS), in float64. Networks with a
    NaN label or α are skipped (counted in ``n_skipped``). If the classes are separable along α
    (every label-1 α ≤ every label-0 α, or the reverse) the maximum-likelihood estimate does not
    exist; α* is then the midpoint of the gap between the classes (``status`` 1).

    Args:
        alpha: (R,) attention rates.
        label: (R,) 0.0 / 1.0 / NaN.

    Returns:
        :class:`Transition`.
    """
    x = np.asarray(alpha, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    skipped = int(np.sum(~ok))
    x, y = x[ok], y[ok]
    n, npos = len(x), int(np.sum(y == 1))
    nan = float("nan")
    if n < 2:
        return Transition(nan, nan, nan, nan, n, npos, skipped, 3)
    if npos in (0, n):
        return Transition(nan, nan, nan, nan, n, npos, skipped, 2)
    x1, x0 = x[y == 1], x[y == 0]
    if x1.max() <= x0.min() or x0.max() <= x1.min():
        lo, hi = (x1.max(), x0.min()) if x1.max() <= x0.min() else (x0.max(), x1.min())
        return Transition(float((lo + hi) / 2), nan, nan, nan, n, npos, skipped, 1)
    X = np.stack([np.ones_like(x), x], axis=1)
    w = np.zeros(2)
    f = _nll(w, x, y)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        g = X.T @ (p - y)
        H = X.T @ (X * (p * (1 - p))[:, None])
        step = np.linalg.solve(H, g)
        t = 1.0
        while True:
            w_new = w - t * step
            f_new = _nll(w_new, x, y)
            if f_new <= f + 1e-12 * abs(f) or t < 1e-8:
                break
            t /= 2
        done = np.max(np.abs(w_new - w)) < 1e-12 * (1 + np.max(np.abs(w)))
        w, f = w_new, f_new
        if done or np.max(np.abs(g)) < 1e-11 * n:
            break
    p = 1.0 / (1.0 + np.exp(-(X @ w)))
    H = X.T @ (X * (p * (1 - p))[:, None])
    b0, b1 = float(w[0]), float(w[1])
    a_star = -b0 / b1
    try:
        cov = np.linalg.inv(H)
        grad = np.asarray([-1.0 / b1, b0 / b1**2])
        se = float(np.sqrt(max(grad @ cov @ grad, 0.0)))
    except np.linalg.LinAlgError:
        se = nan
    return Transition(a_star, se, b1, b0, n, npos, skipped, 0)


def phase_arrays(
    runs: Mapping[str, np.ndarray],
    options: Mapping[str, Any] | None = None,
    sampled: Sequence[str] = (),
    thresholds: Mapping[str, Any] | None = None,
) -> dict:
    """Binned phase diagram over (width, attention rate) with classification and transitions.

    Works for grid and sampled sweeps alike (and for published tables normalised by
    :func:`phasespace.phase.compare.load_table`).

    Args:
        runs: per-network columns (R,): ``d_model``, ``attention_rate``, ``circularity`` and
            any of :data:`BIN_METRICS`.
        options: :data:`phasespace.spec.parse.PHASE_DEFAULTS` fields (missing ones take the defaults).
        sampled: axes drawn from a distribution; for them ``"auto"`` binning never uses
            distinct values (octaves for d_model, 10 bins for the attention rate).
        thresholds: the label thresholds, e.g. a spec's ``[analysis]`` options (other keys are
            ignored; :func:`phasespace.analysis.classify.thresholds`).

    Returns:
        dict of arrays for ``phase.npz``, each family with its axis names under ``dims__<family>``:

        * ``coord__d_model_bin``, ``edges__d_model_bin`` (n_w,), (n_w + 1,); the same for
          ``attention_rate_bin`` (n_a,);
        * ``binned__<subset>__<metric>__<stat>``, dims ``("d_model_bin", "attention_rate_bin")``
          (``dims__binned``), for subset in :data:`SUBSETS`, every present metric of
          :data:`BIN_METRICS`, every label of :func:`phasespace.analysis.classify.labels` and
          ``circular`` (labels and
          ``circular`` as 0/1, so their mean is the fraction), stat in :data:`STATS`;
        * ``transition__<subset>__<label>__<field>``, dims ``("d_model_bin",)``
          (``dims__transition``), field in :data:`TRANSITION_FIELDS`, from :func:`fit_transition`
          of the label on α within each width bin;
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
    a_edges, a_coord = bin_edges(alpha, opts["alpha_bins"], ALPHA_AXIS)
    wi, ai = bin_index(width, w_edges), bin_index(alpha, a_edges)
    shape = (len(w_coord), len(a_coord))
    out: dict[str, np.ndarray] = {
        "dims__binned": np.asarray(BIN_DIMS),
        "dims__transition": np.asarray(BIN_DIMS[:1]),
        f"coord__{BIN_DIMS[0]}": w_coord,
        f"edges__{BIN_DIMS[0]}": w_edges,
        f"coord__{BIN_DIMS[1]}": a_coord,
        f"edges__{BIN_DIMS[1]}": a_edges,
        "options": np.asarray(json.dumps({**opts, **th}, sort_keys=True)),
    }
    circ = classify.circular_mask(runs["circularity"], th["circular_threshold"])
    labels = classify.labels(
        runs, th["gradient_symmetricity_threshold"], th["distance_irrelevance_threshold"]
    )
    cols: dict[str, np.ndarray] = {m: np.asarray(runs[m], dtype=np.float64) for m in BIN_METRICS if m in runs}
    cols.update(labels)
    circ_col = np.where(np.isfinite(np.asarray(runs["circularity"], dtype=np.float64)), circ, np.nan)
    cols["circular"] = circ_col.astype(np.float64)
    for subset in SUBSETS:
        sel = np.ones(len(width), bool) if subset == "all" else circ
        idx = (np.where(sel, wi, -1), ai)
        for m, v in cols.items():
            for stat, arr in binned_stats(v, idx, shape).items():
                out[f"binned__{subset}__{m}__{stat}"] = arr
        for name, y in labels.items():
            fits = []
            for b in range(shape[0]):
                in_bin = sel & (wi == b)
                fits.append(fit_transition(alpha[in_bin], y[in_bin]))
            for field in TRANSITION_FIELDS:
                out[f"transition__{subset}__{name}__{field}"] = np.asarray([getattr(t, field) for t in fits])
    return out


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


def format_transitions(
    arrays: Mapping[str, np.ndarray],
    subsets: Sequence[str] = SUBSETS,
    labels: Sequence[str] = ("symmetric", "distance_dependent_largest_wrong"),
) -> str:
    """α* per width bin as text (``phasespace run`` prints it): one line per width bin, one
    column per subset and label, ``α* ± se (n)``."""
    edges = arrays[f"edges__{BIN_DIMS[0]}"]
    labels = [k for k in labels if f"transition__all__{k}__alpha_star" in arrays]
    short = {"symmetric": "grad sym > th", "distance_dependent": "dist irr < th"}
    short["distance_dependent_largest_wrong"] = "dist irr (lw) < th"
    cols = [(s, k) for s in subsets for k in labels]
    head = f"{'d_model':>12} " + " ".join(f"{s + ', ' + short.get(k, k):>28}" for s, k in cols)
    lines = ["transition attention rate α* per width bin (logistic regression of each label on α)", head]
    for b in range(len(edges) - 1):
        name = bin_label(arrays, BIN_DIMS[0], b)
        cells = []
        for s, k in cols:
            key = f"transition__{s}__{k}"
            a, se, n, st = (arrays[f"{key}__{f}"][b] for f in ("alpha_star", "se", "n", "status"))
            if int(st) == 0:
                cell = f"{a:.3f} ± {se:.3f} ({int(n)})"
            elif int(st) == 1:
                cell = f"{a:.3f} separable ({int(n)})"
            else:
                cell = f"— {STATUS[int(st)]} ({int(n)})"
            cells.append(f"{cell:>28}")
        lines.append(f"{name:>12} " + " ".join(cells))
    return "\n".join(lines)
