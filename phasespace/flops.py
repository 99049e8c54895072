"""Analytic FLOP counts of one network-step (SPEC §2 model, SPEC §4 full-batch step).

A network-step is one optimizer step of one network: a forward pass over all p² pairs, its
backward pass and the AdamW update. Matrix products and the per-pair mixing multiply-adds are
counted (2 FLOPs per multiply-add); the backward pass is counted as twice the forward (one
product for the input gradient, one for the weight gradient), the usual 3× rule; softmax,
activation, loss and optimizer arithmetic are left out (a few % here). The counts are the
arithmetic each computation performs, so achieved FLOP/s = network-steps/s × count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from phasespace.models.fast import fold_unembedding, supports_fast
from phasespace.models.transformer import TransformerArch


def plain_forward_macs(arch: TransformerArch) -> int:
    """Multiply-adds of the plain model's forward pass for ONE input (per pair).

    Blocks before the last run every position; the last block computes queries, attention and
    the MLP at the last position only (what :class:`~phasespace.models.transformer.Block` does).
    """
    d, h, dh, dm, v, n = arch.d_model, arch.n_heads, arch.d_head, arch.d_mlp, arch.vocab, arch.n_ctx
    hd = h * dh
    full = n * 3 * d * hd + 2 * n * n * hd + n * hd * d + n * 2 * d * dm
    last = 2 * n * d * hd + d * hd + 2 * n * hd + hd * d + 2 * d * dm
    return (arch.n_layers - 1) * full + last + d * v


def fast_forward_macs(arch: TransformerArch) -> tuple[int, int]:
    """Multiply-adds of :func:`phasespace.models.fast.fast_logits`: ``(per_vocab, per_pair)``.

    The total for the p² table is ``p·per_vocab + p²·per_pair``.
    """
    d, h, dh, dm, v = arch.d_model, arch.n_heads, arch.d_head, arch.d_mlp, arch.vocab
    hd = h * dh
    per_vocab = (
        5 * d * hd  # q1, k0, k1, v0, v1
        + 2 * h * dh * d  # U0, U1 (W_O per head)
        + 2 * h * d * (dm + v)  # U0, U1 projected on W_in and W_U
        + d * (dm + v)  # X1 projected
    )
    tail = dm * v if fold_unembedding(arch) else dm * d + d * v
    per_pair = hd + 2 * h * (dm + v) + tail  # scores, mixing, MLP output → logits
    return per_vocab, per_pair


def network_step_flops(arch: TransformerArch, fast: bool = True) -> float:
    """FLOPs of one training step of one network over all p² pairs (forward + backward, 3× rule).

    Args:
        arch: the bucket (true width for an unpadded network).
        fast: count the fast computation when the architecture allows it (else the plain one).
    """
    p = arch.p
    if fast and supports_fast(arch):
        per_vocab, per_pair = fast_forward_macs(arch)
        macs = p * per_vocab + p * p * per_pair
    else:
        macs = p * p * plain_forward_macs(arch)
    return 3.0 * 2.0 * macs


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
    from phasespace import parallel

    devs = list(devices) if devices is not None else jax.local_devices()
    mesh = parallel.run_mesh(devs)
    k = mesh.devices.size
    x = jax.random.normal(jax.random.key(0), (k, n, n), jnp.float32) / n**0.5
    y = jax.random.normal(jax.random.key(1), (k, n, n), jnp.float32) / n**0.5
    x, y = parallel.put_runs((np.asarray(x), np.asarray(y)), mesh)

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
