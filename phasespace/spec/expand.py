"""Expansion of a validated spec into its networks, in a deterministic order."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

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
    """
    grid = spec.grid_axes
    sampled = spec.sampled_axes
    fixed = {k: v for k, v in spec.axes.items() if k not in grid and k not in sampled}
    rng = np.random.default_rng(spec.sampling["seed"])
    out: list[Network] = []
    n_samples = spec.sampling["n"] if sampled else 1
    for combo in itertools.product(*(spec.axes[k] for k in grid)):
        for _ in range(n_samples):
            values = dict(fixed)
            values.update(zip(grid, combo, strict=True))
            for k in sampled:
                values[k] = _draw(k, spec.axes[k], rng)
            out.append(Network(len(out), {k: values[k] for k in AXES}))
    return out
