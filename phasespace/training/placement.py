"""Devices and hosts: the run axis sharded over every device, in groups that fit each device.

Networks never communicate, so a population is laid out by three numbers (:class:`Layout`):

* the **mesh**: every device of every process, one axis ``"runs"``; the run axis R is padded to a
  multiple of the device count with inert copies of the last network (results discarded) and
  sharded with ``NamedSharding(mesh, P("runs"))``;
* on a CPU (one process), each device instead runs its own copy of one one-device program on its
  ⌈R/D⌉ networks (:func:`per_device_programs`), so that the numbers do not depend on D;
* the **group size** G: inside a device, ``jax.shard_map`` hands each device its R/D networks and
  ``jax.lax.map(..., batch_size=G)`` runs them G at a time (``vmap`` inside a group, sequential
  across groups), each group doing all K steps of a chunk while its working set stays in memory
  (on a CPU, in cache: G = 1 is fastest there; on an accelerator G = R/D fills it);
* the **host chunks**: when even the population state does not fit a device, the bucket is
  trained as several sub-populations, one after another (see :mod:`phasespace.training.memory`).

Across hosts, :func:`initialize_distributed` starts ``jax.distributed`` (from arguments or the
``PHASESPACE_COORDINATOR`` / ``PHASESPACE_NUM_PROCESSES`` / ``PHASESPACE_PROCESS_ID`` environment
variables); ``jax.devices()`` then lists every process's devices, every process runs the same
program on its own shard, and results are gathered with ``multihost_utils.process_allgather``
(only process 0 writes files).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "runs"
"""Name of the mesh axis the run axis is sharded over."""

ENV_COORDINATOR = "PHASESPACE_COORDINATOR"
ENV_NUM_PROCESSES = "PHASESPACE_NUM_PROCESSES"
ENV_PROCESS_ID = "PHASESPACE_PROCESS_ID"


# --------------------------------------------------------------------------------------------- #
# Processes


class DistributedConfigError(ValueError):
    """Incomplete or invalid multi-process options."""


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start ``jax.distributed`` for a multi-process (multi-host) run, before any computation.

    Each argument falls back to its environment variable (:data:`ENV_COORDINATOR`,
    :data:`ENV_NUM_PROCESSES`, :data:`ENV_PROCESS_ID`). With no coordinator address and a single
    process nothing is started.

    Args:
        coordinator_address: ``host:port`` of process 0, e.g. ``"10.0.0.1:1234"``.
        num_processes: total number of processes (≥ 1).
        process_id: this process's index in [0, num_processes).

    Returns:
        True if ``jax.distributed`` was initialised.

    Raises:
        DistributedConfigError: naming the option when the values are incomplete or out of range.
    """
    env = os.environ
    addr = coordinator_address or env.get(ENV_COORDINATOR) or None
    n_raw = num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES)
    i_raw = process_id if process_id is not None else env.get(ENV_PROCESS_ID)
    try:
        n = int(n_raw) if n_raw is not None else None
        i = int(i_raw) if i_raw is not None else None
    except ValueError as e:
        raise DistributedConfigError(
            f"num_processes={n_raw!r}, process_id={i_raw!r}: must be integers "
            f"(options --num-processes/--process-id or ${ENV_NUM_PROCESSES}/${ENV_PROCESS_ID})"
        ) from e
    if addr is None and (n is None or n == 1):
        return False
    if addr is None or n is None or i is None:
        raise DistributedConfigError(
            f"coordinator_address={addr!r}, num_processes={n!r}, process_id={i!r}: a multi-process run "
            "needs all three (options --coordinator/--num-processes/--process-id or "
            f"${ENV_COORDINATOR}/${ENV_NUM_PROCESSES}/${ENV_PROCESS_ID})"
        )
    if n < 1 or not 0 <= i < n:
        raise DistributedConfigError(
            f"num_processes={n}, process_id={i}: need num_processes ≥ 1 and 0 ≤ process_id < num_processes"
        )
    jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=i)
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that writes results)."""
    return jax.process_index() == 0


# --------------------------------------------------------------------------------------------- #
# Layout


def run_mesh(devices: Sequence[jax.Device] | None = None, n_networks: int | None = None) -> Mesh:
    """A 1-D mesh named :data:`AXIS` over ``devices`` (default: every device of every process).

    In a single-process run with fewer networks than devices, only the first ``n_networks``
    devices are used (no device trains only inert copies).
    """
    devs = list(devices) if devices is not None else jax.devices()
    if n_networks is not None and jax.process_count() == 1:
        devs = devs[: max(1, min(len(devs), n_networks))]
    return Mesh(np.asarray(devs, dtype=object), (AXIS,))


def default_group_size(per_device: int, platform: str) -> int:
    """Networks vmapped together on one device: 1 on CPU (each network's working set stays in
    cache; measured fastest, benchmarks/RESULTS.md), all of them on an accelerator."""
    return 1 if platform == "cpu" else max(per_device, 1)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a population of ``n_networks`` networks is laid out on devices.

    Attributes:
        mesh: 1-D device mesh (axis :data:`AXIS`).
        n_networks: R, the true number of networks.
        group_size: G, networks vmapped together inside a device.
        host_chunk: networks per sub-population trained at once (a multiple of the device
            count; ≥ R means the whole bucket at once).
    """

    mesh: Mesh
    n_networks: int
    group_size: int
    host_chunk: int

    def __post_init__(self) -> None:
        d = self.n_devices
        if self.n_networks < 1:
            raise ValueError(f"n_networks={self.n_networks}: a population needs at least one network")
        if self.group_size < 1:
            raise ValueError(f"group_size={self.group_size}: must be ≥ 1")
        if self.host_chunk < d or self.host_chunk % d:
            raise ValueError(f"host_chunk={self.host_chunk}: must be a positive multiple of the {d} devices")

    @property
    def n_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def chunks(self) -> list[tuple[int, int]]:
        """``(start, stop)`` network ranges of the sub-populations, in run-axis order."""
        step = self.host_chunk
        return [(s, min(s + step, self.n_networks)) for s in range(0, self.n_networks, step)]

    def padded(self, n: int) -> int:
        """``n`` rounded up to a multiple of the device count."""
        d = self.n_devices
        return -(-n // d) * d

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (recorded in ``environment.json``)."""
        out = {
            "devices": self.n_devices,
            "processes": jax.process_count(),
            "group_size": self.group_size,
            "host_chunk": min(self.host_chunk, self.padded(self.n_networks)),
            "host_chunks": len(self.chunks),
            "padded_networks": sum(self.padded(b - a) for a, b in self.chunks),
            "per_device_programs": per_device_programs(self),
        }
        if out["per_device_programs"]:  # each device's slice padded to the same length
            out["padded_networks"] = sum(
                len(s) * n for n, s in (device_slices(b - a, self.n_devices) for a, b in self.chunks)
            )
        return out


def simple_layout(
    n_networks: int,
    devices: Sequence[jax.Device] | None = None,
    group_size: int | None = None,
) -> Layout:
    """A layout with no memory check: all networks at once, default group size."""
    mesh = run_mesh(devices, n_networks)
    d = mesh.devices.size
    per_device = -(-n_networks // d)
    g = group_size or default_group_size(per_device, mesh.devices.flat[0].platform)
    return Layout(mesh, n_networks, min(g, per_device), per_device * d)


def per_device_programs(layout: Layout) -> bool:
    """Whether ``layout`` runs one one-device program per device instead of one SPMD program.

    On a CPU in a single process it does: XLA compiles a program partitioned over a D-device mesh
    (D ≥ 2) differently from the same computation on one device (other fusions, so other float32
    rounding: parameters 1e-7 apart after five steps, then diverging training curves), and a
    network's numbers depended on the device count. With every device running the same one-device
    program, each network goes through the same code whatever the device count, the host chunk or
    the other networks on its device (tests/test_determinism.py).
    """
    return layout.mesh.devices.flat[0].platform == "cpu" and jax.process_count() == 1


def device_slices(n: int, n_devices: int) -> tuple[int, list[tuple[int, int]]]:
    """How ``n`` networks are split over ``n_devices`` one-device programs: ``(n_local, slices)``
    with n_local = ⌈n / n_devices⌉ networks per program and the ``[start, stop)`` range of each
    device used (the last one may be shorter; it is padded with copies of its last network)."""
    n_local = ceil_div(n, n_devices)
    return n_local, [(s, min(s + n_local, n)) for s in range(0, n, n_local)]


# --------------------------------------------------------------------------------------------- #
# Moving population arrays


def pad_runs(tree: Any, n: int) -> Any:
    """Pad every leaf's leading run axis to length ``n`` with copies of its last entry (host)."""

    def pad(x: Any) -> np.ndarray:
        x = np.asarray(x)
        extra = n - x.shape[0]
        if extra < 0:
            raise ValueError(f"pad_runs: run axis {x.shape[0]} is longer than the target {n}")
        if extra == 0:
            return x
        return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)], axis=0)

    return jax.tree_util.tree_map(pad, tree)


def put_runs(tree: Any, mesh: Mesh) -> Any:
    """Host arrays (leading run axis, a multiple of the device count) → global arrays sharded
    ``P("runs")`` over ``mesh``. Every process passes the same full arrays; each one only
    materialises its own devices' shards (works across processes)."""
    sharding = NamedSharding(mesh, P(AXIS))

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, tree)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Host arrays → global arrays replicated on every device of ``mesh``."""
    sharding = NamedSharding(mesh, P())

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, tree)


def to_host(x: Any) -> np.ndarray:
    """A (possibly multi-process, sharded) array as one NumPy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def tree_to_host(tree: Any) -> Any:
    """:func:`to_host` of every leaf of a pytree."""
    return jax.tree_util.tree_map(to_host, tree)


# --------------------------------------------------------------------------------------------- #
# Per-device programs


def sharded_map(fn: Any, mesh: Mesh, group_size: int, n_sharded: int, n_replicated: int) -> Any:
    """``shard_map`` of ``lax.map(fn, batch_size=group_size)`` over the run axis.

    ``fn(*sharded_one, *replicated)`` computes ONE network: its first ``n_sharded`` arguments are
    that network's slices (pytrees), the next ``n_replicated`` are shared by all networks. The
    returned function takes the stacked (R_pad, ...) sharded arguments and the replicated ones and
    returns fn's outputs stacked along the run axis, sharded the same way.
    """

    def per_device(*args: Any) -> Any:
        sharded, shared = args[:n_sharded], args[n_sharded:]
        return jax.lax.map(lambda xs: fn(*xs, *shared), tuple(sharded), batch_size=group_size)

    specs = (P(AXIS),) * n_sharded + (P(),) * n_replicated
    return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P(AXIS))


def ceil_div(a: int, b: int) -> int:
    """⌈a / b⌉ for positive integers."""
    return -(-a // b)


def arch_name(arch: Any) -> str:
    """A one-line description of a bucket's architecture (for messages)."""
    return (
        f"p={arch.p}, d_model={arch.d_model}, n_layers={arch.n_layers}, n_heads={arch.n_heads}, "
        f"act={arch.act}, diff_vocab={arch.diff_vocab}, eqn_sign={arch.eqn_sign}"
    )


XLA_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def _xla_flags_device_count() -> tuple[str, int | None] | None:
    """``(text, count)`` of the device-count setting in ``$XLA_FLAGS`` (count None if it is not an
    integer), or None when the variable does not set it."""
    m = re.search(XLA_DEVICE_COUNT_FLAG + r"=(\S*)", os.environ.get("XLA_FLAGS", ""))
    if m is None:
        return None
    try:
        return m.group(0), int(m.group(1))
    except ValueError:
        return m.group(0), None


def use_cpu_devices(n: int | None = None) -> int:
    """Expose ``n`` CPU devices (default: one per CPU core this process may use) so that the run
    axis is sharded over the cores: each core then trains its own networks (measured faster on a
    CPU than splitting every operation across cores). Must run before JAX initialises its
    backends. Results do not depend on the count (see
    :func:`phasespace.training.placement.per_device_programs`).

    Returns:
        The number of CPU devices requested, or set by ``XLA_FLAGS``; -1 when JAX had already
        initialised its backends and ``n`` is None (nothing changed).

    Raises:
        ValueError: (one line) if ``n`` is not a positive integer, if ``XLA_FLAGS`` already sets
            ``--xla_force_host_platform_device_count`` to another number, or if JAX already runs
            with another number of CPU devices.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(
            f"--cpu-devices={n!r}: must be a positive integer (≥ 1); omit it for one device per CPU core"
        )
    flag = _xla_flags_device_count()
    if flag is not None:
        text, forced = flag
        if forced is None or forced < 1:
            raise ValueError(f"XLA_FLAGS sets {text}: the device count must be a positive integer")
        if n is not None and n != forced:
            raise ValueError(
                f"--cpu-devices={n} contradicts XLA_FLAGS, which sets {text}: "
                "give one of them, or the same number in both"
            )
        return forced
    count = n or len(os.sched_getaffinity(0))
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        if n is None:
            return -1
        have = len(jax.devices("cpu"))
        if have != n:
            raise ValueError(
                f"--cpu-devices={n}: JAX already runs with {have} CPU devices in this process "
                "(the count must be set before JAX starts)"
            ) from None
    return count
