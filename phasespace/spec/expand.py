"""Expansion of a validated spec into its networks, in a deterministic order."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from phasespace.defaults import ATTENTION_FAMILIES
from phasespace.spec.networks import INT_AXES, Network
from phasespace.spec.parse import AXES, SweepSpec


def _draw(key: str, d: Mapping[str, Any], rng: np.random.Generator) -> Any:
    if d["dist"] == "uniform":
        x = rng.uniform(d["low"], d["high"])
    elif d["dist"] == "log2uniform":
        x = 2.0 ** rng.uniform(d["low"], d["high"])
    else:
        x = rng.integers(int(d["low"]), int(d["high"]))
    return math.floor(x) if key in INT_AXES else float(x)


def expand(spec: SweepSpec) -> list[Network]:
    """All networks of the sweep, in a deterministic order (grid points, then samples).

    A sampled axis value of network i depends only on ``sampling.seed`` and i's position, so
    the expansion is reproducible.

    Families without attention (``model`` not in :data:`phasespace.defaults.ATTENTION_FAMILIES`)
    have no attention rate: their networks take the default ``attention_rate`` (a placeholder
    the model ignores; the runs table shows NaN) and the attention-rate axis is collapsed, so such
    a family gets one network per combination of its other axes, not one per α. The same holds
    for ``n_heads``, which they do not have either (the default stands in; two values would give
    two identical networks in two buckets of the same name). (Random draws are made as for every
    network, so the attention families' networks do not depend on it.)
    """
    grid = spec.grid_axes
    sampled = spec.sampled_axes
    fixed = {k: v for k, v in spec.axes.items() if k not in grid and k not in sampled}
    rng = np.random.default_rng(spec.sampling["seed"])
    out: list[Network] = []
    seen: set[tuple[Any, ...]] = set()
    n_samples = spec.sampling["n"] if sampled else 1
    for combo in itertools.product(*(spec.axes[k] for k in grid)):
        for _ in range(n_samples):
            values = dict(fixed)
            values.update(zip(grid, combo, strict=True))
            for k in sampled:
                values[k] = _draw(k, spec.axes[k], rng)
            if values["model"] not in ATTENTION_FAMILIES:
                values["attention_rate"] = AXES["attention_rate"]
                values["n_heads"] = AXES["n_heads"]
                key = tuple(values[k] for k in AXES)
                if key in seen:
                    continue
                seen.add(key)
            out.append(Network(len(out), {k: values[k] for k in AXES}))
    return out
