"""Sweep specs: TOML → a typed, validated :class:`SweepSpec`, expanded into networks.

Imports no JAX: reading and checking a spec is instant and never starts a device.
"""

from phasespace.spec.expand import expand as expand
from phasespace.spec.networks import Network as Network
from phasespace.spec.networks import NetworkSpec as NetworkSpec
from phasespace.spec.networks import Recipe as Recipe
from phasespace.spec.parse import SpecError as SpecError
from phasespace.spec.parse import SweepSpec as SweepSpec
from phasespace.spec.parse import load_spec as load_spec
from phasespace.spec.parse import parse_spec as parse_spec
