"""The machine's measured matmul peak, the denominator of every achieved-FLOP/s figure in
``benchmarks/``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from phasespace.training import placement


def measure_matmul_flops(
    devices: Sequence[jax.Device] | None = None,
    n: int = 2048,
    precision: str = "highest",
    repeats: int = 5,
    depth: int = 8,
) -> float:
    """Measured matmul FLOP/s of ``devices`` together (default: this process's devices of the
    default backend): best of ``repeats`` calls, each a chain of ``depth`` (n × n)·(n × n) float32
    products per device (2·n³ FLOPs each), run on all devices at once.

    Args:
        devices: the devices measured (their sum is reported).
        n: matrix size.
        precision: a ``jax.default_matmul_precision`` name ("highest" = exact float32).
        repeats: timed calls (after one warm-up).
        depth: products per call.

    Returns:
        FLOP/s (float).
    """
    devs = list(devices) if devices is not None else jax.local_devices()
    mesh = placement.run_mesh(devs)
    k = mesh.devices.size
    x = jax.random.normal(jax.random.key(0), (k, n, n), jnp.float32) / n**0.5
    y = jax.random.normal(jax.random.key(1), (k, n, n), jnp.float32) / n**0.5
    x, y = placement.put_runs((np.asarray(x), np.asarray(y)), mesh)

    @jax.jit
    def chain(a: jax.Array, b: jax.Array) -> jax.Array:
        with jax.default_matmul_precision(precision):
            for _ in range(depth):
                a = a @ b
        return a

    jax.block_until_ready(chain(x, y))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(chain(x, y))
        best = min(best, time.perf_counter() - t)
    return k * depth * 2.0 * n**3 / best
