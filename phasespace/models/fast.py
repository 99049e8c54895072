"""Exact fast computation of the full logit table of a 1-layer, two-token transformer.

The plain model (:class:`phasespace.models.transformer.Transformer`) pushes all p² inputs through
every matrix product. With two input tokens and one block, everything that is *linear in one
token's embedding* can be computed once per vocabulary entry (p rows) and combined per pair by
broadcasting; only the 2-key softmax and the MLP nonlinearity need the p² pairs.

Notation (SPEC §2; one network; heads h = 1…H; token a at position 0, token b at position 1):

* X0[a] = W_E[:, a] + W_pos[0] and X1[b] = W_E[:, b′] + W_pos[1], (p, d); b′ = b (+ p: diff_vocab).
* Q1[b, h] = W_Q[h]·X1[b]; K_i, V_i likewise from X_i, (p, H, d_head).
* s0[a, b, h] = scale·Q1[b, h]·K0[a, h], (p, p, H); s1[b, h] = scale·Q1[b, h]·K1[b, h], (p, H).
* Softmax over the two keys: m0 = σ(s0 − s1), m1 = σ(s1 − s0); mixed m′_i = α·m_i + (1 − α).
* U_i[·, h] = W_O[:, h]·V_i[·, h], (p, H, d): head h's output per unit of attention weight.
* Residual at position 1: r[a, b] = X1[b] + Σ_h (m′0[a, b, h]·U0[a, h] + m′1[a, b, h]·U1[b, h]).
* The MLP pre-activation W_in·r + b_in and the direct path r·W_U are linear in r, so both are
  projected once per vocabulary entry (W_in·U_i, W_in·X1, U_i·W_U, X1·W_U) and mixed per pair
  with the same weights m′ (:func:`pair_mix`).
* logits = r·W_U + b_out·W_U + act(pre)·W_outᵀ·W_U, with W_outᵀ·W_U folded into one
  (d_mlp, V) matrix when that is cheaper (4·d > 3·V, :func:`fold_unembedding`).

Per pair this costs 2·H·(d_mlp + V) multiply-adds of mixing, the nonlinearity and one
d_mlp → V product (or d_mlp → d → V), instead of every projection on p² rows
(:mod:`phasespace.population.flops` counts both). The mixing has a hand-written backward pass (one
contraction per cotangent). The result equals the plain model's to float32
rounding: ``tests/models/test_fast.py`` checks logits and gradients for ReLU, GeLU and tanh, α ∈ {0, 0.3, 1},
padded and unpadded buckets and the separate operand vocabulary.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from phasespace.models.transformer import TransformerArch, activation


def supports_fast(arch: Any) -> bool:
    """Whether :func:`fast_logits` applies: a transformer with one block and two input tokens
    (no equals token)."""
    return isinstance(arch, TransformerArch) and arch.n_layers == 1 and not arch.eqn_sign


def fold_unembedding(arch: TransformerArch) -> bool:
    """Whether to fold W_outᵀ·W_U into one (d_mlp, V) matrix: cheaper per pair when
    d_mlp·V < d_mlp·d + d·V, i.e. 4·d > 3·V (static: decided by the bucket's shape)."""
    d, dm, v = arch.d_model, arch.d_mlp, arch.vocab
    return dm * v < dm * d + d * v


def fast_logits(
    params: Any, arch: TransformerArch, attention_rate: jax.Array, attn_scale: jax.Array
) -> jax.Array:
    """Logits of one 1-layer network over all p² pairs, computed per vocabulary entry (exact).

    Args:
        params: one network's Flax parameters ``{"params": {...}}`` (no run axis; vmap for a
            population), possibly zero-padded to the bucket width ``arch.d_model``.
        arch: static architecture; must satisfy :func:`supports_fast`.
        attention_rate: float32 scalar α ∈ [0, 1] (SPEC §2).
        attn_scale: float32 scalar, 1/√d_head of the network's true width.

    Returns:
        float32 (p², V): row i is the input (a, b) = (i // p, i % p), the order of
        :func:`phasespace.tasks.all_pairs`; identical (to float32 rounding) to
        ``Transformer(arch).apply(params, all_pairs tokens, attention_rate, attn_scale)``.

    Raises:
        ValueError: if the architecture has more than one block or an equals token.
    """
    if not supports_fast(arch):
        raise ValueError(
            f"fast_logits: n_layers={arch.n_layers}, eqn_sign={arch.eqn_sign}: the fast path needs "
            "n_layers = 1 and eqn_sign = false (two input tokens)"
        )
    P = params["params"]
    blk = P["blocks_0"]
    p, H, dh, d = arch.p, arch.n_heads, arch.d_head, arch.d_model
    off = p if arch.diff_vocab else 0
    w_e, w_pos, w_u = P["W_E"], P["W_pos"], P["W_U"]
    x0 = w_e[:, :p].T + w_pos[0]  # (p, d), token a at position 0
    x1 = w_e[:, off : off + p].T + w_pos[1]  # (p, d), token b at position 1

    q1 = jnp.einsum("hed,bd->bhe", blk["W_Q"], x1)
    k0 = jnp.einsum("hed,ad->ahe", blk["W_K"], x0)
    k1 = jnp.einsum("hed,bd->bhe", blk["W_K"], x1)
    v0 = jnp.einsum("hed,ad->ahe", blk["W_V"], x0)
    v1 = jnp.einsum("hed,bd->bhe", blk["W_V"], x1)
    s0 = jnp.einsum("bhe,ahe->abh", q1, k0) * attn_scale  # (p_a, p_b, H)
    s1 = jnp.einsum("bhe,bhe->bh", q1, k1) * attn_scale  # (p_b, H)
    diff = s0 - s1[None]
    alpha = attention_rate
    mix0 = alpha * jax.nn.sigmoid(diff) + (1.0 - alpha)  # m′ of key 0 (token a)
    mix1 = alpha * jax.nn.sigmoid(-diff) + (1.0 - alpha)  # m′ of key 1 (token b)

    w_o = blk["W_O"].reshape(d, H, dh)
    u0 = jnp.einsum("dhe,ahe->ahd", w_o, v0)  # (p, H, d): head h's output per unit weight on key a
    u1 = jnp.einsum("dhe,bhe->bhd", w_o, v1)
    # The MLP pre-activation and the direct residual→logit path are linear in the residual r, so
    # they are projected once per vocabulary entry and mixed per pair.
    w_in_t = blk["W_in"].T  # (d, d_mlp)
    post = pair_mix_act(arch.act, mix0, mix1, u0 @ w_in_t, u1 @ w_in_t, x1 @ w_in_t + blk["b_in"])
    direct = pair_mix(mix0, mix1, u0 @ w_u, u1 @ w_u, x1 @ w_u + blk["b_out"] @ w_u)
    post = post.reshape(p * p, arch.d_mlp)
    w_out_t = blk["W_out"].T  # (d_mlp, d)
    tail = post @ (w_out_t @ w_u) if fold_unembedding(arch) else (post @ w_out_t) @ w_u
    return direct.reshape(p * p, -1) + tail


# --------------------------------------------------------------------------------------------- #
# Per-pair mixing z[a, b] = base[b] + Σ_h m0[a, b, h]·g0[a, h] + m1[a, b, h]·g1[b, h], with a
# hand-written backward: autodiff of the broadcasts gives one reduction per head and XLA
# recomputes the mixing inside them; here each cotangent is one contraction.


def _mix(m0: jax.Array, m1: jax.Array, g0: jax.Array, g1: jax.Array, base: jax.Array) -> jax.Array:
    z = base[None, :, :]
    for h in range(m0.shape[-1]):  # H broadcast multiply-adds, fused by XLA into one loop
        z = z + m0[:, :, h, None] * g0[:, None, h, :] + m1[:, :, h, None] * g1[None, :, h, :]
    return z


def _mix_bwd(m0, m1, g0, g1, dz):
    dz_t = jnp.swapaxes(dz, 0, 1)  # (b, a, F): the b-indexed term contracts over a per b
    dm0 = jnp.einsum("abf,ahf->abh", dz, g0)
    dm1 = jnp.swapaxes(jnp.einsum("baf,bhf->bah", dz_t, g1), 0, 1)
    dg0 = jnp.einsum("abh,abf->ahf", m0, dz)
    dg1 = jnp.einsum("bah,baf->bhf", jnp.swapaxes(m1, 0, 1), dz_t)
    return dm0, dm1, dg0, dg1, jnp.sum(dz, axis=0)


@jax.custom_vjp
def pair_mix(m0: jax.Array, m1: jax.Array, g0: jax.Array, g1: jax.Array, base: jax.Array) -> jax.Array:
    """z[a, b, f] = base[b, f] + Σ_h m0[a, b, h]·g0[a, h, f] + m1[a, b, h]·g1[b, h, f].

    Args:
        m0, m1: float32 (p, p, H), per-pair weights of the a- and b-indexed vectors.
        g0, g1: float32 (p, H, F), per-vocabulary vectors.
        base: float32 (p, F), indexed by b.

    Returns:
        float32 (p, p, F).
    """
    return _mix(m0, m1, g0, g1, base)


def _pair_mix_fwd(m0, m1, g0, g1, base):
    return _mix(m0, m1, g0, g1, base), (m0, m1, g0, g1)


def _pair_mix_bwd(res, dz):
    return _mix_bwd(*res, dz)


pair_mix.defvjp(_pair_mix_fwd, _pair_mix_bwd)


def _gelu_grad(z: jax.Array) -> jax.Array:
    """d/dz of the exact GeLU z·Φ(z): Φ(z) + z·φ(z)."""
    cdf = 0.5 * (1.0 + jax.lax.erf(z * (1.0 / math.sqrt(2.0))))
    pdf = jnp.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + z * pdf


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def pair_mix_act(act: str, m0, m1, g0, g1, base) -> jax.Array:
    """``activation(act, pair_mix(m0, m1, g0, g1, base))``: (p, p, F) float32.

    The backward keeps the activation (ReLU: its mask; tanh: its derivative 1 − tanh²) or the
    pre-activation (GeLU) behind an optimization barrier, so XLA does not recompute the mixing
    to get the derivative.
    """
    return activation(act, _mix(m0, m1, g0, g1, base))


def _pair_mix_act_fwd(act, m0, m1, g0, g1, base):
    z = _mix(m0, m1, g0, g1, base)
    out = activation(act, z)
    saved = jax.lax.optimization_barrier(z if act == "gelu" else out)
    return out, (m0, m1, g0, g1, saved)


def _pair_mix_act_bwd(act, res, dout):
    m0, m1, g0, g1, saved = res
    if act == "relu":
        dz = jnp.where(saved > 0, dout, 0.0)
    elif act == "tanh":
        dz = dout * (1.0 - saved * saved)  # d tanh(z)/dz = 1 − tanh(z)²
    else:
        dz = dout * _gelu_grad(saved)
    return _mix_bwd(m0, m1, g0, g1, dz)


pair_mix_act.defvjp(_pair_mix_act_fwd, _pair_mix_act_bwd)


def logits_table(
    arch: Any,
    params: Any,
    attention_rate: jax.Array,
    attn_scale: jax.Array,
    tokens: jax.Array,
    fast: bool = True,
) -> jax.Array:
    """The full (p², V) logit table of one network, by the fast path when it applies.

    Args:
        arch: static architecture (any model family of :mod:`phasespace.models.registry`).
        params: one network's parameters.
        attention_rate, attn_scale: float32 scalars.
        tokens: int32 (p², n_ctx), :func:`phasespace.tasks.all_pairs` (used by the plain path only;
            the fast path assumes exactly that order).
        fast: use :func:`fast_logits` when :func:`supports_fast` (default); False forces the
            plain Flax model.

    Returns:
        float32 (p², V).
    """
    if fast and supports_fast(arch):
        return fast_logits(params, arch, attention_rate, attn_scale)
    from phasespace.models.registry import make_model

    return make_model(arch).apply(params, tokens, attention_rate, attn_scale)
