"""phasespace: map the algorithmic phase space (Clock vs Pizza) of populations of small
transformers trained on modular arithmetic, vmapped in JAX.

A sweep is data flowing one way, one package per stage (each imports only from those before it;
the ``[tool.importlinter]`` contracts of ``pyproject.toml``, checked in CI by ``lint-imports``)::

    defaults, hooks, tasks → spec → models → population → training → analysis → io → phase
        → sweep → bench → cli

The public API is re-exported here and loaded lazily, so ``import phasespace`` (and reading a
spec) does not import JAX:

* :func:`load_spec` / :func:`parse_spec` → :class:`SweepSpec`; :func:`expand` → networks;
* :func:`run_sweep` trains, analyses and writes a sweep directory; :func:`load_sweep` reads one;
* lower level: :func:`build_population` stacks networks on a run axis, :func:`train_population`
  trains them in one ``jit(vmap(lax.scan))`` program per chunk, :func:`analyze_population` /
  :func:`analyze_full` compute every metric with one vmapped call;
* :func:`register_operation` adds a binary operation on Z_p (the ``operation`` axis) besides the
  built-in ones of :mod:`phasespace.operations`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "SpecError": "phasespace.spec.parse",
    "SweepSpec": "phasespace.spec.parse",
    "load_spec": "phasespace.spec.parse",
    "parse_spec": "phasespace.spec.parse",
    "expand": "phasespace.spec.expand",
    "Network": "phasespace.spec.networks",
    "NetworkSpec": "phasespace.spec.networks",
    "Recipe": "phasespace.spec.networks",
    "make_arch": "phasespace.models.registry",
    "build_population": "phasespace.population.stack",
    "train_population": "phasespace.training.loop",
    "analyze_population": "phasespace.analysis.network",
    "analyze_full": "phasespace.analysis.circuits",
    "load_sweep": "phasespace.io.store",
    "SweepResult": "phasespace.io.store",
    "run_sweep": "phasespace.sweep.run",
    "register_operation": "phasespace.operations",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'phasespace' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from phasespace.analysis.circuits import analyze_full as analyze_full
    from phasespace.analysis.network import analyze_population as analyze_population
    from phasespace.io.store import SweepResult as SweepResult
    from phasespace.io.store import load_sweep as load_sweep
    from phasespace.models.registry import make_arch as make_arch
    from phasespace.operations import register_operation as register_operation
    from phasespace.population.stack import build_population as build_population
    from phasespace.spec.expand import expand as expand
    from phasespace.spec.networks import Network as Network
    from phasespace.spec.networks import NetworkSpec as NetworkSpec
    from phasespace.spec.networks import Recipe as Recipe
    from phasespace.spec.parse import SpecError as SpecError
    from phasespace.spec.parse import SweepSpec as SweepSpec
    from phasespace.spec.parse import load_spec as load_spec
    from phasespace.spec.parse import parse_spec as parse_spec
    from phasespace.sweep.run import run_sweep as run_sweep
    from phasespace.training.loop import train_population as train_population
