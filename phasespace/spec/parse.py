"""Sweep specs: TOML loading, validation with clear errors, expansion into networks and buckets.

A spec has four tables::

    name = "quick"
    [axes]            # each field: a value, a list (a grid axis), or a distribution table
    p = 31
    d_model = 32
    attention_rate = [0.0, 0.5, 1.0]
    seed = [0, 1]
    [sampling]        # only when an axis is a distribution
    n = 100           # networks drawn per grid point
    seed = 0
    [train]
    steps = 3000
    batch_size = 512  # "full" (default: every training pair each step) or pairs per step
    shuffle = false   # minibatch order: the split's order each epoch (false) or a fresh one (true)
    early_stop = [1.0, 100]  # stop once test accuracy ≥ 1.0 at 100 consecutive steps; default false
    [analysis]
    n_triples = 100
    every = 1000      # record every metric every 1000 steps (metrics_history.npz); 0: off
    [buckets]         # width buckets per static group (phasespace.population.buckets.plan_widths)
    max_buckets = 8
    max_waste = 0.1
    [phase]           # phase-diagram binning (phasespace.spec.parse.PHASE_DEFAULTS)
    alpha_bins = 10    # or "auto", "distinct", a list of edges

The label thresholds (``circular_threshold``, ``gradient_symmetricity_threshold``,
``distance_irrelevance_threshold``, :data:`phasespace.defaults.THRESHOLDS`) are ``[analysis]``
options, read by the classification of the runs table and by the phase diagrams alike.

``operation`` selects the labels c = f(a, b) mod p (:mod:`phasespace.operations`): ``"add"``
(default, the paper's task), ``"sub"``, ``"mul"``, ``"x2_plus_y2"``, ``"x2_plus_xy_plus_y2"``,
``"x3_plus_xy"`` or one registered from Python (:func:`phasespace.register_operation`; on the
command line ``--import MODULE``). It is per-network data (a list sweeps it), never a
distribution; an unknown name is a :class:`SpecError` naming the registered ones.

``model`` selects the family: ``"transformer"`` (default) or an appendix MLP model
``"mlp_alpha"``, ``"mlp_alpha_prime"``, ``"mlp_beta"``, ``"mlp_gamma"``, ``"mlp_delta"`` (SPEC §3;
width = ``d_model``, 256 in the paper; they need n_layers = 1, act = "relu", no diff_vocab /
eqn_sign, and ignore n_heads) or the reference's attention-free ``"linearformer"`` (the token
embeddings, each of width d_model // n_ctx, concatenated and zero-padded to d_model, then
n_layers blocks x ← act(W_in x + b_in); any n_layers, act, diff_vocab, eqn_sign; d_model ≥ n_ctx;
ignores n_heads; the transformer's recipe). Neither has attention, so no attention rate: their
runs-table ``attention_rate`` is NaN, the attention-rate axis is collapsed for them (one network
per combination of the other axes) and a spec whose models all lack attention may not set it).
``train.batch_size``, ``train.shuffle`` and ``train.early_stop`` are the reference code's
options (:class:`phasespace.spec.networks.Recipe`): ``steps`` counts optimizer steps, each network
has ceil(n_train / batch_size) batches per epoch (n_train is its own), the loss of a step is the
mean over its batch, and the batch order is each network's own (from its split seed, per-network
data). A network stopped early keeps its parameters frozen while the rest train on.
``train.b2`` and ``train.warmup_steps`` default to the family's recipe (transformer 0.98 / 10,
MLP 0.999 / 0, SPEC §4).

Grid axes are crossed (Cartesian product, in the order of :data:`AXES`); distribution axes are
drawn independently for each of ``sampling.n`` networks per grid point. Distributions:
``{dist = "uniform", low, high}``, ``{dist = "log2uniform", low, high}`` (2^U(low, high), the
paper's widths, rounded down to an integer for integer axes) and ``{dist = "randint", low, high}``
(integers in [low, high)). ``{dist = "range", low, high}`` is a *grid* axis of the integers
low, …, high − 1 (e.g. one seed per network: ``seed = {dist = "range", low = 0, high = 2400}``).

Everything is validated before any compute; errors name the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from phasespace.defaults import (
    ACTIVATIONS,
    ATTENTION_FAMILIES,
    CIRCULARITY_COMPONENTS,
    DI_METRICS,
    MAX_BUCKETS,
    MAX_WASTE,
    MIN_P,
    MODEL_FAMILIES,
    N_TRIPLES,
    PAPER_AXES,
    PAPER_STEPS,
    PRECISIONS,
    RECIPE_DEFAULTS,
    THRESHOLDS,
    TRIPLE_SEED,
    recipe_family,
)
from phasespace.operations import OperationError
from phasespace.operations import get as get_operation
from phasespace.spec.networks import BOOL_AXES, FLOAT_AXES, INT_AXES, STATIC_AXES, Recipe

AXES: dict[str, Any] = dict(PAPER_AXES)
"""Every sweepable axis with its default (the paper's recipe; ``data_seed = -1`` means "= seed")."""


TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": PAPER_STEPS,
    "chunk_steps": 500,
    "precision": "float32",
    "warmup_steps": None,
    "b1": 0.9,
    "b2": None,
    "eps": 1e-8,
    "log_every": 100,
    "checkpoint_every": 1000,
    "fast": True,
    "group_size": "auto",
    "memory_limit": "auto",
    "batch_size": "full",
    "shuffle": False,
    "early_stop": False,
}
"""``None``: the model family's default (:data:`phasespace.defaults.RECIPE_DEFAULTS`).
``batch_size``: ``"full"`` or an integer ≥ 1; ``early_stop``: false or ``[a, b]`` (see
:class:`phasespace.spec.networks.Recipe`)."""
ANALYSIS_DEFAULTS: dict[str, Any] = {
    "n_triples": N_TRIPLES,
    "triple_seed": TRIPLE_SEED,
    "every": 0,
    "n_components": 12,
    "min_power": 0.9,
    **THRESHOLDS,
    "di_metric": "distance_irrelevance",
}
"""``every``: record all metrics every N steps (0: only at the end); the label thresholds
(:data:`phasespace.defaults.THRESHOLDS`, applied by :mod:`phasespace.analysis.classify` to the runs
table and the phase diagrams); the rest: see :class:`phasespace.analysis.circuits.CircuitOptions`."""
SAMPLING_DEFAULTS: dict[str, Any] = {"n": 0, "seed": 0}
BUCKET_DEFAULTS: dict[str, Any] = {
    "max_buckets": MAX_BUCKETS,
    "max_waste": MAX_WASTE,
}
TOP_KEYS = ("name", "axes", "sampling", "train", "analysis", "buckets", "phase")
DISTRIBUTIONS = ("uniform", "log2uniform", "randint", "range")


PHASE_DEFAULTS: dict[str, Any] = {
    "alpha_bins": "auto",
    "width_bins": "auto",
}
"""Binning options of :func:`phasespace.phase.diagram.phase_arrays` (the ``[phase]`` table of a
sweep spec; the label thresholds are ``[analysis]`` options, :data:`ANALYSIS_DEFAULTS`).

* ``alpha_bins``: ``"auto"`` (one bin per distinct attention rate if there are at most
  :data:`phasespace.phase.diagram.MAX_DISTINCT` of them, else 10 equal bins on [0, 1]),
  ``"distinct"``, an integer n (n equal bins on [0, 1]) or a list of edges.
* ``width_bins``: ``"auto"`` (one bin per distinct d_model if there are at most
  :data:`phasespace.phase.diagram.MAX_DISTINCT`, else octaves [2^k, 2^(k+1)), the paper's 32–63, 64–127, …),
  ``"distinct"``, ``"octave"`` or a list of edges.
"""

MOVED_KEYS: dict[str, str] = {
    "phase.circular_threshold": "analysis.circular_threshold",
    "phase.symmetric_threshold": "analysis.gradient_symmetricity_threshold",
    "phase.irrelevance_threshold": "analysis.distance_irrelevance_threshold",
    "analysis.gs_threshold": "analysis.gradient_symmetricity_threshold",
    "analysis.di_threshold": "analysis.distance_irrelevance_threshold",
}
"""Keys of earlier specs → their one name now; a spec using an old key is refused naming the new."""

ADDED_KEYS: dict[str, Any] = {
    "axes.operation": AXES["operation"],
    "train.batch_size": "full",
    "train.shuffle": False,
    "train.early_stop": False,
}
"""Keys added since earlier sweeps were stored → the value that gives those sweeps' behaviour (a
stored spec or checkpoint without the key compares as having it, so it still resumes)."""

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


class SpecError(ValueError):
    """An invalid sweep spec; the message names the field, the value and what is allowed."""


def _unknown(kind: str, key: str, allowed: Any) -> SpecError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return SpecError(f"{kind}: unknown key {key!r}{hint} (allowed: {', '.join(sorted(allowed))})")


_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_sweep_name(name: Any) -> str:
    """A sweep name is one safe path component: letters, digits, '.', '_' and '-', not '.' or
    '..' (the default output folder is ``runs/<name>``, which must stay inside ``runs/``).

    Raises:
        SpecError: naming the value and what is allowed.
    """
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise SpecError(
            f"name={name!r}: must be one path component of letters, digits, '.', '_' and '-', "
            "not '.' or '..' (the sweep is written to runs/<name>)"
        )
    return name


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, math.isqrt(n) + 1))


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec.

    Attributes:
        name: sweep name (default output folder ``runs/<name>``).
        axes: axis name → a scalar, a tuple (grid) or a distribution dict.
        sampling: ``n`` (networks per grid point when an axis is a distribution) and ``seed``.
        train: the recipe fields of :data:`TRAIN_DEFAULTS`.
        analysis: the fields of :data:`ANALYSIS_DEFAULTS`.
        buckets: width-bucket planning, the fields of :data:`BUCKET_DEFAULTS`.
        phase: phase-diagram options, the fields of :data:`phasespace.spec.parse.PHASE_DEFAULTS`.
    """

    name: str
    axes: Mapping[str, Any]
    sampling: Mapping[str, Any]
    train: Mapping[str, Any]
    analysis: Mapping[str, Any]
    buckets: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(BUCKET_DEFAULTS))
    phase: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(PHASE_DEFAULTS))

    @property
    def recipe(self) -> Recipe:
        """The transformer recipe (family defaults filled in); see :meth:`recipe_for`."""
        return self.recipe_for("transformer")

    def recipe_for(self, model: str) -> Recipe:
        """The recipe of a bucket of model family ``model``: ``[train]`` values, ``None`` ones
        replaced by the family's defaults (SPEC §4, :data:`phasespace.defaults.RECIPE_DEFAULTS`)."""
        t = dict(self.train)
        defaults = RECIPE_DEFAULTS[recipe_family(model)]
        for k, v in defaults.items():
            if t.get(k) is None:
                t[k] = v
        es = t["early_stop"]
        return Recipe(
            steps=int(t["steps"]),
            b1=float(t["b1"]),
            b2=float(t["b2"]),
            eps=float(t["eps"]),
            warmup_steps=int(t["warmup_steps"]),
            precision=str(t["precision"]),
            fast=bool(t["fast"]),
            batch_size=None if t["batch_size"] == "full" else int(t["batch_size"]),
            shuffle=bool(t["shuffle"]),
            early_stop=None if es is False else (float(es[0]), int(es[1])),
        )

    @property
    def grid_axes(self) -> list[str]:
        """Axes given as lists, in :data:`AXES` order."""
        return [k for k in AXES if isinstance(self.axes[k], tuple)]

    @property
    def sampled_axes(self) -> list[str]:
        return [k for k in AXES if isinstance(self.axes[k], dict)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able resolved spec (every default filled in)."""
        axes = {k: list(v) if isinstance(v, tuple) else v for k, v in self.axes.items()}
        return {
            "name": self.name,
            "axes": axes,
            "sampling": dict(self.sampling),
            "train": dict(self.train),
            "analysis": dict(self.analysis),
            "buckets": dict(self.buckets),
            "phase": dict(self.phase),
        }

    def resolved(self) -> dict[str, Any]:
        """:meth:`to_dict` plus ``resolved``, the values the spec leaves to each model family or
        network (``spec.json``; :func:`spec_from_dict` reads it back):

        * ``recipes``: model family (each value of ``axes.model``) → its training recipe with
          the family's defaults filled in (``b2``, ``warmup_steps``; SPEC §4).
        * ``data_seed``: the ``data_seed`` axis with −1 written as ``"seed"`` (the split seed is
          the network's own seed); each network's resolved split seed is the ``data_seed``
          column of ``runs.csv``.
        """
        models = _values(self.axes["model"])
        ds = self.axes["data_seed"]
        if isinstance(ds, tuple):
            data_seed: Any = ["seed" if v == -1 else v for v in ds]
        elif isinstance(ds, dict):
            data_seed = dict(ds)
        else:
            data_seed = "seed" if ds == -1 else ds
        d = self.to_dict()
        d[RESOLVED_KEY] = {
            "recipes": {m: dataclasses.asdict(self.recipe_for(m)) for m in models},
            "data_seed": data_seed,
        }
        return d


RESOLVED_KEY = "resolved"
"""The key of ``spec.json`` holding the derived values of :meth:`SweepSpec.resolved` (not a
spec table: recomputed from the rest, and not accepted in a spec file)."""


def spec_from_dict(d: Mapping[str, Any]) -> SweepSpec:
    """The spec stored in a sweep's ``spec.json`` (:meth:`SweepSpec.resolved` or, from older
    sweeps, :meth:`SweepSpec.to_dict`, keys of earlier versions renamed by
    :func:`upgrade_stored_spec`), validated again; ``resolved`` is ignored (it is derived).

    Raises:
        SpecError: as :func:`parse_spec`.
    """
    return parse_spec(upgrade_stored_spec({k: v for k, v in d.items() if k != RESOLVED_KEY}))


def _check_value(field: str, key: str, v: Any) -> Any:
    where = f"{field}"
    if key in BOOL_AXES:
        if not isinstance(v, bool):
            raise SpecError(f"{where}={v!r}: must be true or false")
        return v
    if key == "model":
        if not isinstance(v, str) or v not in MODEL_FAMILIES:
            raise SpecError(f"{where}={v!r}: must be one of {list(MODEL_FAMILIES)}")
        return v
    if key == "operation":
        try:
            get_operation(v)
        except OperationError as e:
            raise SpecError(f"{where}: {e}") from None
        return v
    if key == "act":
        if not isinstance(v, str) or v.lower() not in ACTIVATIONS:
            raise SpecError(f"{where}={v!r}: must be one of {list(ACTIVATIONS)}")
        return v.lower()
    if key in INT_AXES:
        if isinstance(v, bool) or not isinstance(v, int):
            raise SpecError(f"{where}={v!r}: must be an integer")
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{where}={v!r}: must be a finite number")
    if key == "p" and not (v >= MIN_P and _is_prime(v)):
        raise SpecError(
            f"{where}={v!r}: the modulus p must be a prime ≥ {MIN_P} (circularity averages "
            f"{CIRCULARITY_COMPONENTS} principal components of the p centred token embeddings, which "
            f"span at most p − 1 dimensions; with p = 3 it is 2/3 for every network)"
        )
    if key == "n_layers" and not 1 <= v <= 8:
        raise SpecError(f"{where}={v!r}: must be an integer in [1, 8]")
    if key == "n_heads" and v < 1:
        raise SpecError(f"{where}={v!r}: must be ≥ 1")
    if key == "d_model" and v < 1:
        raise SpecError(f"{where}={v!r}: must be a positive width (≥ n_heads)")
    if key == "attention_rate" and not 0.0 <= v <= 1.0:
        raise SpecError(f"{where}={v!r}: the attention rate must be in [0, 1]")
    if key == "lr" and not v > 0:
        raise SpecError(f"{where}={v!r}: the learning rate must be > 0")
    if key == "weight_decay" and not v >= 0:
        raise SpecError(f"{where}={v!r}: the weight decay must be ≥ 0")
    if key == "train_fraction" and not 0.0 < v < 1.0:
        raise SpecError(f"{where}={v!r}: the train fraction must be in (0, 1)")
    if key == "seed" and not 0 <= v < 2**32:
        raise SpecError(f"{where}={v!r}: must be in [0, 2**32)")
    if key == "data_seed" and not -1 <= v < 2**32:
        raise SpecError(f"{where}={v!r}: must be -1 (same as seed) or in [0, 2**32)")
    return float(v) if key in FLOAT_AXES else v


def _check_axis(key: str, v: Any) -> Any:
    field = f"axes.{key}"
    if isinstance(v, list):
        if not v:
            raise SpecError(f"{field}=[]: a grid axis needs at least one value")
        vals = tuple(_check_value(f"{field}[{i}]", key, x) for i, x in enumerate(v))
        if len(set(vals)) != len(vals):
            raise SpecError(f"{field}={v!r}: grid values must be distinct")
        return vals
    if isinstance(v, dict):
        if key in BOOL_AXES or key in ("act", "model", "operation"):
            raise SpecError(f"{field}: {key} cannot be sampled from a distribution; give a list")
        if key in STATIC_AXES:
            raise SpecError(
                f"{field}: {key} changes the compiled program; give it as a list, not a distribution"
            )
        d = dict(v)
        if d.get("dist") == "range":
            if key not in INT_AXES or key in STATIC_AXES:
                raise SpecError(
                    f"{field}.dist='range': only for the integer axes "
                    f"{[a for a in INT_AXES if a not in STATIC_AXES]}"
                )
            for k in d:
                if k not in ("dist", "low", "high"):
                    raise _unknown(field, k, ("dist", "low", "high"))
            for k in ("low", "high"):
                if k not in d or isinstance(d[k], bool) or not isinstance(d[k], int):
                    raise SpecError(f"{field}.{k}={d.get(k)!r}: must be an integer")
            if not d["low"] < d["high"]:
                raise SpecError(f"{field}: low={d['low']!r} must be < high={d['high']!r}")
            return tuple(
                _check_value(f"{field}[{i}]", key, x) for i, x in enumerate(range(d["low"], d["high"]))
            )
        for k in d:
            if k not in ("dist", "low", "high"):
                raise _unknown(field, k, ("dist", "low", "high"))
        if d.get("dist") not in DISTRIBUTIONS:
            raise SpecError(f"{field}.dist={d.get('dist')!r}: must be one of {list(DISTRIBUTIONS)}")
        for k in ("low", "high"):
            if k not in d or isinstance(d[k], bool) or not isinstance(d[k], (int, float)):
                raise SpecError(f"{field}.{k}={d.get(k)!r}: must be a number")
        if not d["low"] < d["high"]:
            raise SpecError(f"{field}: low={d['low']!r} must be < high={d['high']!r}")
        if d["dist"] == "randint" and key not in INT_AXES:
            raise SpecError(f"{field}.dist='randint': only for integer axes {list(INT_AXES)}")
        if d["dist"] == "log2uniform":
            ends = (2.0 ** d["low"], 2.0 ** d["high"])
        else:
            ends = (d["low"], d["high"] - (1 if d["dist"] == "randint" else 0))
        for e in ends:
            x = math.floor(e) if key in INT_AXES else float(e)
            _check_value(f"{field} (range end {e!r})", key, x)
        return d
    return _check_value(field, key, v)


def _check_table(name: str, raw: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"{name}={raw!r}: must be a table")
    out = dict(defaults)
    for k, v in raw.items():
        if f"{name}.{k}" in MOVED_KEYS:
            raise SpecError(f"{name}.{k}: moved to {MOVED_KEYS[f'{name}.{k}']}")
        if k not in defaults:
            raise _unknown(name, k, defaults)
        out[k] = v
    return out


def parse_spec(raw: Mapping[str, Any], name: str | None = None) -> SweepSpec:
    """Validate a spec given as a dict (the parsed TOML): each table in turn, then the
    combinations of axes.

    Raises:
        SpecError: for the first invalid field, naming it, its value and what is allowed.
    """
    for k in raw:
        if k not in TOP_KEYS:
            raise _unknown("spec", k, TOP_KEYS)
    sweep_name = _check_name(raw, name)
    axes_raw = _check_table("axes", raw.get("axes"), AXES)
    axes = {k: _check_axis(k, v) for k, v in axes_raw.items()}
    sampling = _check_sampling(_check_table("sampling", raw.get("sampling"), SAMPLING_DEFAULTS), axes)
    train = _check_train(_check_table("train", raw.get("train"), TRAIN_DEFAULTS))
    analysis = _check_table("analysis", raw.get("analysis"), ANALYSIS_DEFAULTS)
    _check_triples(analysis, "n_triples" in (raw.get("analysis") or {}), min(_values(axes["p"])))
    _check_analysis(analysis)
    bucket_opts = _check_buckets(_check_table("buckets", raw.get("buckets"), BUCKET_DEFAULTS))
    phase_opts = _check_table("phase", raw.get("phase"), PHASE_DEFAULTS)
    try:
        check_phase_options(phase_opts)
    except ValueError as e:
        raise SpecError(str(e)) from e
    spec = SweepSpec(sweep_name, axes, sampling, train, analysis, bucket_opts, phase_opts)
    _check_combinations(spec)
    return spec


def _check_name(raw: Mapping[str, Any], name: str | None) -> str:
    if "name" not in raw and "axes" not in raw:
        raise SpecError(
            'empty spec: a spec must contain at least its sweep\'s name (name = "...") or an [axes] '
            "table saying which networks to train (e.g. [axes] p = 59, attention_rate = [0.0, 1.0]); "
            "refusing to start a default run"
        )
    if "name" in raw:
        return check_sweep_name(raw["name"])
    sweep_name = name or "sweep"
    if not _SAFE_NAME.fullmatch(sweep_name) or sweep_name in (".", ".."):
        raise SpecError(
            f"name: the spec gives none and its file name {sweep_name!r} is not a safe sweep name "
            "(letters, digits, '.', '_', '-'); add name = \"...\" to the spec"
        )
    return sweep_name


def _check_buckets(bucket_opts: dict[str, Any]) -> dict[str, Any]:
    mb = bucket_opts["max_buckets"]
    if isinstance(mb, bool) or not isinstance(mb, int) or mb < 1:
        raise SpecError(f"buckets.max_buckets={mb!r}: must be an integer ≥ 1")
    mw = bucket_opts["max_waste"]
    if isinstance(mw, bool) or not isinstance(mw, (int, float)) or not 0.0 <= mw < 1.0:
        raise SpecError(f"buckets.max_waste={mw!r}: must be a number in [0, 1)")
    return bucket_opts


def _check_sampling(sampling: dict[str, Any], axes: Mapping[str, Any]) -> dict[str, Any]:
    for k in ("n", "seed"):
        if isinstance(sampling[k], bool) or not isinstance(sampling[k], int) or sampling[k] < 0:
            raise SpecError(f"sampling.{k}={sampling[k]!r}: must be an integer ≥ 0")
    sampled = [k for k, v in axes.items() if isinstance(v, dict)]
    if sampled and sampling["n"] < 1:
        raise SpecError(
            f"sampling.n={sampling['n']!r}: axes {sampled} are distributions, so sampling.n must be ≥ 1"
        )
    if not sampled and sampling["n"] > 0:
        raise SpecError(f"sampling.n={sampling['n']!r}: no axis is a distribution; remove it or give one")
    return sampling


def _check_train(train: dict[str, Any]) -> dict[str, Any]:
    for k in ("steps", "chunk_steps", "log_every", "checkpoint_every"):
        v = train[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"train.{k}={v!r}: must be a positive integer")
    w = train["warmup_steps"]
    if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
        raise SpecError(f"train.warmup_steps={w!r}: must be an integer ≥ 0")
    if not isinstance(train["fast"], bool):
        raise SpecError(f"train.fast={train['fast']!r}: must be true (fast path when possible) or false")
    g = train["group_size"]
    if g != "auto" and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
        raise SpecError(f"train.group_size={g!r}: must be 'auto' or a positive integer")
    try:
        parse_bytes(train["memory_limit"], "train.memory_limit")
    except ValueError as e:
        raise SpecError(str(e)) from None
    if train["precision"] not in PRECISIONS:
        raise SpecError(f"train.precision={train['precision']!r}: must be one of {list(PRECISIONS)}")
    for k in ("b1", "b2"):
        v = train[k]
        if v is None and k == "b2":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise SpecError(f"train.{k}={v!r}: must be in [0, 1)")
    eps = train["eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise SpecError(f"train.eps={eps!r}: must be a finite number > 0")
    _check_minibatch(train)
    return train


def _check_minibatch(train: dict[str, Any]) -> None:
    bs = train["batch_size"]
    if bs != "full" and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
        raise SpecError(f'train.batch_size={bs!r}: must be "full" (every training pair) or an integer ≥ 1')
    if not isinstance(train["shuffle"], bool):
        raise SpecError(f"train.shuffle={train['shuffle']!r}: must be true or false")
    if train["shuffle"] and bs == "full":
        raise SpecError(
            "train.shuffle=true: needs minibatches (train.batch_size an integer); a full batch has no order"
        )
    es = train["early_stop"]
    if es is False:
        return
    ok = isinstance(es, (list, tuple)) and len(es) == 2
    a, b = (es[0], es[1]) if ok else (None, None)
    ok = ok and not isinstance(a, bool) and isinstance(a, (int, float)) and 0.0 <= a <= 1.0
    ok = ok and not isinstance(b, bool) and isinstance(b, int) and b >= 1
    if not ok:
        raise SpecError(
            f"train.early_stop={es!r}: must be false (off) or [a, b] with a test accuracy a in [0, 1] "
            "and b ≥ 1 consecutive evaluations (the reference's early stop)"
        )
    train["early_stop"] = [float(a), int(b)]


def _check_triples(analysis: Mapping[str, Any], given: bool, p_min: int) -> None:
    n_t = analysis["n_triples"]
    if isinstance(n_t, bool) or not isinstance(n_t, int) or n_t < 1:
        raise SpecError(f"analysis.n_triples={n_t!r}: must be a positive integer")
    if given and n_t > p_min**3:
        # (the default, 100, falls back to all p³ triples when p³ is smaller)
        raise SpecError(
            f"analysis.n_triples={n_t!r}: must be ≤ p³ = {p_min**3} (p={p_min}), "
            "the number of triples (a, b, c)"
        )
    if isinstance(analysis["triple_seed"], bool) or not isinstance(analysis["triple_seed"], int):
        raise SpecError(f"analysis.triple_seed={analysis['triple_seed']!r}: must be an integer")


def _check_analysis(analysis: Mapping[str, Any]) -> None:
    for k in ("every", "n_components"):
        v = analysis[k]
        lo = 0 if k == "every" else 2
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise SpecError(f"analysis.{k}={v!r}: must be an integer ≥ {lo}")
    for k, lo, hi in (
        ("min_power", 0.0, 1.0),
        ("circular_threshold", 0.0, 1.0),
        ("gradient_symmetricity_threshold", -1.0, 1.0),
        ("distance_irrelevance_threshold", 0.0, math.inf),
    ):
        v = analysis[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise SpecError(f"analysis.{k}={v!r}: must be a number in [{lo}, {hi}]")
    if analysis["di_metric"] not in DI_METRICS:
        raise SpecError(f"analysis.di_metric={analysis['di_metric']!r}: must be one of {list(DI_METRICS)}")


def _values(v: Any) -> list[Any]:
    return list(v) if isinstance(v, tuple) else [v]


def _check_combinations(spec: SweepSpec) -> None:
    a = spec.axes
    models = _values(a["model"])
    alpha = a["attention_rate"]
    if not any(m in ATTENTION_FAMILIES for m in models) and (
        isinstance(alpha, dict)
        or any(v != AXES["attention_rate"] for v in _values(alpha))
        or len(_values(alpha)) > 1
    ):
        shown = list(alpha) if isinstance(alpha, tuple) else alpha
        raise SpecError(
            f"axes.attention_rate={shown!r}: no model of this spec "
            f"(axes.model={models}) has attention, so it has no attention rate (families with attention: "
            f"{list(ATTENTION_FAMILIES)}); remove axes.attention_rate"
        )
    mlps = [m for m in models if MODEL_FAMILIES[m] is not None]
    if mlps:
        needs = {"n_layers": 1, "act": "relu", "diff_vocab": False, "eqn_sign": False}
        for k, want in needs.items():
            bad = [v for v in _values(a[k]) if v != want]
            if bad:
                raise SpecError(
                    f"axes.{k}={bad[0]!r}: the MLP models (axes.model={mlps}) need "
                    f"{k} = {want!r}; sweep other {k} values in a separate spec"
                )
    heads = _values(a["n_heads"])
    widths = (
        _values(a["d_model"]) if not isinstance(a["d_model"], dict) else [int(2.0 ** a["d_model"]["low"])]
    )
    if isinstance(a["d_model"], dict) and a["d_model"]["dist"] != "log2uniform":
        widths = [int(a["d_model"]["low"])]
    if "linearformer" in models:
        n_ctx = 3 if any(_values(a["eqn_sign"])) else 2
        for d in widths:
            if d < n_ctx:
                raise SpecError(
                    f"axes.d_model={d!r}: the linearformer needs d_model ≥ n_ctx={n_ctx} (its token "
                    "embeddings are d_model // n_ctx wide)"
                )
    for d in widths:
        for h in heads:
            if d < h:
                raise SpecError(
                    f"axes.d_model={d!r}: must be ≥ n_heads={h} (d_head = floor(d_model/n_heads))"
                )
    tf = a["train_fraction"]
    fractions = [tf["low"], tf["high"]] if isinstance(tf, dict) else _values(tf)
    for p in _values(a["p"]):
        for f in fractions:
            k = math.floor(f * p * p)
            if k == 0 or k == p * p:
                raise SpecError(
                    f"axes.train_fraction={f!r}: with p={p} gives {k} of {p * p} training pairs; "
                    "both the train and the test split must be non-empty"
                )


def upgrade_stored_spec(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved spec stored by an earlier version (a sweep's ``spec.json``) with the keys of
    :data:`MOVED_KEYS` under their names of today (the newer value wins where both are present).
    Specs a person writes get the :class:`SpecError` instead."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for old, new in MOVED_KEYS.items():
        (t_old, k_old), (t_new, k_new) = old.split("."), new.split(".")
        if isinstance(out.get(t_old), dict) and k_old in out[t_old]:
            v = out[t_old].pop(k_old)
            out.setdefault(t_new, {}).setdefault(k_new, v)
    return out


def load_spec(path: str) -> SweepSpec:
    """Read and validate a TOML sweep spec.

    Raises:
        SpecError: invalid content (the message names the field); FileNotFoundError.
    """
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{path}: not valid TOML: {e}") from e
    return parse_spec(raw, name=os.path.splitext(os.path.basename(path))[0])


def parse_bytes(value: Any, field: str = "memory_limit") -> int | None:
    """``"auto"``/None → None; an integer number of bytes or a string like ``"512MiB"``, ``"8GB"``.

    Raises:
        ValueError: naming ``field``, the value and the accepted forms.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field}={value!r}: must be 'auto', a number of bytes, or e.g. '8GiB'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"{field}={value!r}: must be a positive number of bytes")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(
            f"{field}={value!r}: must be 'auto', a positive number of bytes, or a size such as "
            "'512MiB', '8GB', '1.5GiB' (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def check_phase_options(options: Mapping[str, Any]) -> None:
    """Validate the ``[phase]`` options (see :data:`PHASE_DEFAULTS`).

    Raises:
        ValueError: naming the field, its value and what is allowed.
    """
    for key in ("alpha_bins", "width_bins"):
        v = options[key]
        kinds = ("auto", "distinct") + (("octave",) if key == "width_bins" else ())
        if isinstance(v, str):
            if v not in kinds:
                raise ValueError(f"phase.{key}={v!r}: must be one of {list(kinds)}, a number or a list")
        elif isinstance(v, bool):
            raise ValueError(f"phase.{key}={v!r}: must be one of {list(kinds)}, a number or a list")
        elif isinstance(v, int):
            if key != "alpha_bins" or v < 1:
                raise ValueError(f"phase.{key}={v!r}: an integer is allowed for alpha_bins only, ≥ 1")
        elif isinstance(v, (list, tuple)):
            if len(v) < 2 or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
                raise ValueError(f"phase.{key}={v!r}: a list of at least two numeric edges")
            if any(not b > a for a, b in itertools.pairwise(v)):
                raise ValueError(f"phase.{key}={v!r}: edges must be strictly increasing")
        else:
            raise ValueError(f"phase.{key}={v!r}: must be one of {list(kinds)}, a number or a list")
