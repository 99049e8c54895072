"""Memory planning: split a bucket's population into pieces that fit each device.

The bytes a compiled program needs on one device come from XLA's own accounting of that very
program (``jax.jit(...).lower(...).compile().memory_analysis()``: arguments + outputs − donated
aliases + temporaries). The limit is the device's memory (``device.memory_stats()["bytes_limit"]``
less what is in use) on an accelerator, the available RAM on a CPU, or a configured value
(``[train] memory_limit``, or the ``PHASESPACE_MEMORY_LIMIT`` environment variable), times a
safety fraction.

:func:`plan_training` compiles the training chunk for the whole population with the default group
size; if it does not fit, it lowers the group size G (networks vmapped together on a device) and
then the host chunk (networks whose state is on the device at once) from that first measurement,
and verifies the result by compiling it. If one network per device does not fit, it raises
:class:`DeviceMemoryError` naming the bucket, the bytes needed and the limit.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from phasespace.models.transformer import TransformerArch
from phasespace.spec.parse import parse_bytes
from phasespace.training import placement

ENV_MEMORY_LIMIT = "PHASESPACE_MEMORY_LIMIT"
SAFETY = 0.85
"""Fraction of a device's free memory that a plan may use (XLA's accounting omits some runtime
buffers)."""


class DeviceMemoryError(ValueError):
    """A single network (one per device) does not fit the device memory limit."""


def device_memory_limit(device: jax.Device, override: int | None = None) -> int:
    """Bytes a plan may use on ``device``.

    Args:
        device: a JAX device.
        override: a configured limit in bytes (used as is); else ``$PHASESPACE_MEMORY_LIMIT``;
            else the device's free memory (accelerators: ``bytes_limit − bytes_in_use``; CPU:
            available RAM) times :data:`SAFETY`.
    """
    if override is not None:
        return int(override)
    env = parse_bytes(os.environ.get(ENV_MEMORY_LIMIT), ENV_MEMORY_LIMIT)
    if env is not None:
        return env
    if device.process_index != jax.process_index():  # stats are only readable for own devices
        device = jax.local_devices(backend=device.platform)[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    else:  # host memory: the RAM this machine has available now, shared by its CPU devices
        free = available_ram() // max(1, len(jax.local_devices(backend=device.platform)))
    return int(free * SAFETY)


def available_ram() -> int:
    """Bytes of RAM available to new allocations (Linux ``MemAvailable``; else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def compiled_bytes(compiled: Any) -> int:
    """Bytes one device needs to run ``compiled`` (a ``jax.stages.Compiled``): arguments +
    outputs − donated aliases + temporaries + generated code."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
        + m.generated_code_size_in_bytes
    )


def agreed_limit(limit: int) -> int:
    """The smallest limit over all processes, so that every process makes the same plan."""
    if jax.process_count() == 1:
        return limit
    from jax.experimental import multihost_utils

    mib = np.asarray([min(limit // 2**20, 2**31 - 1)], np.int32)  # int32: x64 is off
    return int(np.min(multihost_utils.process_allgather(mib))) * 2**20


def min_network_bytes(arch: Any) -> int:
    """A lower bound on the device bytes one network needs to train: its full-batch float32
    logits, p² × V × 4 bytes (the program holds them and their gradient, and much more)."""
    return int(arch.p) ** 2 * int(arch.vocab) * 4


@dataclasses.dataclass(frozen=True)
class Plan:
    """A layout with its measured footprint.

    Attributes:
        layout: the chosen :class:`phasespace.training.placement.Layout`.
        bytes_needed: bytes per device of the chosen training program.
        limit: the limit it was planned against.
        compiles: programs compiled while planning.
    """

    layout: placement.Layout
    bytes_needed: int
    limit: int
    compiles: int

    def describe(self) -> dict[str, Any]:
        return {**self.layout.describe(), "bytes_per_device": self.bytes_needed, "memory_limit": self.limit}


def plan_training(
    arch: TransformerArch,
    recipe: Any,
    n_networks: int,
    chunk_steps: int,
    devices: Any = None,
    memory_limit: int | None = None,
    group_size: int | None = None,
) -> Plan:
    """Choose the group size and host chunk so that the training chunk fits every device.

    The program for the whole population at the default group size is compiled first; if XLA's
    memory analysis puts it above the limit, the program for one network per device is compiled
    too, the footprint is modelled as base + (networks held)·state + G·work (state from the
    parameter shapes, work from the two measurements), the largest fitting layout is chosen and
    its program compiled to verify it (halving further if needed).

    Args:
        arch: the bucket.
        recipe: a :class:`phasespace.training.step.Recipe`.
        n_networks: R.
        chunk_steps: steps per compiled call (the program measured).
        devices: devices of the mesh (default: all, across processes).
        memory_limit: bytes per device (default: :func:`device_memory_limit`).
        group_size: the largest G to use (default:
            :func:`phasespace.training.placement.default_group_size`).

    Returns:
        A :class:`Plan`. The programs are cached, so training reuses the compiled one.

    Raises:
        DeviceMemoryError: if one network per device does not fit, with the numbers.
    """
    from phasespace.training.program import (
        compiled_device_chunk,
        compiled_sharded_chunk,
        state_bytes_per_network,
    )

    mesh = placement.run_mesh(devices, n_networks)
    d = mesh.devices.size
    dev = mesh.devices.flat[0]
    limit = agreed_limit(device_memory_limit(dev, memory_limit))
    floor = min_network_bytes(arch)
    if floor > limit:  # refused before compiling (or allocating) anything of this size
        raise DeviceMemoryError(
            f"p={arch.p}: one network's full-batch logits alone need {floor} bytes "
            f"({floor / 2**30:.3g} GiB: p² × V × 4 B, V = {arch.vocab}), above the memory limit of "
            f"{limit} bytes ({limit / 2**30:.3g} GiB) on {dev.device_kind}; use a smaller p"
        )
    per_device = placement.ceil_div(n_networks, d)
    g0 = min(group_size or placement.default_group_size(per_device, dev.platform), per_device)
    k = min(chunk_steps, recipe.steps)
    compiles = 0

    def measure(g: int, chunk: int) -> int:
        nonlocal compiles
        compiles += 1
        layout = placement.Layout(mesh, n_networks, g, chunk * d)
        if placement.per_device_programs(layout):  # the program every device runs (the first one's)
            return compiled_bytes(compiled_device_chunk(arch, recipe, k, g, chunk, dev))
        return compiled_bytes(compiled_sharded_chunk(arch, recipe, k, layout, chunk * d))

    need = measure(g0, per_device)
    if need <= limit:
        return Plan(placement.Layout(mesh, n_networks, g0, per_device * d), need, limit, compiles)
    need1 = need if (g0, per_device) == (1, 1) else measure(1, 1)
    if need1 > limit:
        raise DeviceMemoryError(
            f"bucket ({placement.arch_name(arch)}): one network per device needs {need1 / 2**20:.1f} MiB "
            f"for a training chunk of {k} steps on {dev.device_kind}, above the memory limit of "
            f"{limit / 2**20:.1f} MiB. Raise [train] memory_limit (or ${ENV_MEMORY_LIMIT}) if the "
            "device has more free memory, or use a smaller d_model or p."
        )
    state = state_bytes_per_network(arch, recipe) + 4 * 4 * k  # + its history outputs
    work = max((need - need1 - (per_device - 1) * state) / (g0 - 1), 0.0) if g0 > 1 else 0.0
    base = need1 - state - work
    if base + per_device * state + work <= limit:
        chunk = per_device
    else:
        chunk = max(1, min(per_device, int((limit - base - work) // state)))
    g = min(g0, chunk, int((limit - base - chunk * state) // work) if work > 0 else g0)
    g = max(g, 1)
    need = measure(g, chunk) if (g, chunk) != (1, 1) else need1
    while need > limit and (g > 1 or chunk > 1):
        if g > 1:
            g = max(1, g // 2)
        else:
            chunk = max(1, chunk // 2)
        need = measure(g, chunk) if (g, chunk) != (1, 1) else need1
    return Plan(placement.Layout(mesh, n_networks, g, chunk * d), need, limit, compiles)
