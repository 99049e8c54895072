"""The reference code's attention-free "Linearformer" (``Linearformer`` in ``code/train-main.py``
of the paper's repository, selected there by ``use_linear``), written in Flax.

With n_ctx input tokens (2, or 3 with the equals token) and e = d_model // n_ctx::

    x = [W_E[:, t_0] ; W_E[:, t_1] ; (W_E[:, t_2]) ; 0]      (length d_model: n_ctx·e, then
                                                               d_model mod n_ctx zeros)
    x ← act(W_in x + b_in)                                    (n_layers times, no residual)
    logits = x · W_U                                          (V classes)

No positional embedding and no attention (the reference ignores its ``attn_coeff``).

Parameter layout (per network, no run axis; the population stacks a leading run axis R), the
reference's shapes and initialisation:

==================  ======================  ==============================
name                shape                   init: N(0, 1) divided by
==================  ======================  ==============================
``W_E``             (e, V)                  √e
``blocks_i/W_in``   (d_model, d_model)      √d_model
``blocks_i/b_in``   (d_model,)              zeros
``W_U``             (d_model, V)            √V
==================  ======================  ==============================

Width buckets: a network of width d lives in a bucket of width D with its embedding rows
zero-padded (e → E = D // n_ctx), each operand's block of ``blocks_0/W_in`` columns moved to
its place in the bucket's concatenation (block i at columns i·E … i·E + e − 1) and the last
d mod n_ctx columns of ``blocks_0/W_in`` (which always multiply the zero padding of the true
network, so they never change: no gradient, only weight decay) at columns n_ctx·E onwards. That
needs d mod n_ctx ≤ D mod n_ctx (:func:`resize_params`); the planner only shares a bucket between
widths of one residue mod n_ctx (:func:`phasespace.population.buckets.plan_buckets`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phasespace.defaults import ACTIVATIONS
from phasespace.models.init import TaskShape, fit, normal
from phasespace.models.transformer import activation


@dataclasses.dataclass(frozen=True)
class LinearformerArch(TaskShape):
    """Static shape of a Linearformer bucket.

    Attributes:
        p: modulus.
        d_model: hidden width (the bucket's padded width inside a population), ≥ n_ctx.
        n_layers: number of ``act(W_in x + b_in)`` blocks, ≥ 1.
        act: "relu", "gelu" (exact erf form) or "tanh".
        diff_vocab: separate operand vocabulary (SPEC §1).
        eqn_sign: equals token appended (SPEC §1); n_ctx = 3, so e = d_model // 3.
    """

    p: int
    d_model: int
    n_layers: int = 1
    act: str = "relu"
    diff_vocab: bool = False
    eqn_sign: bool = False

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act={self.act!r}: must be one of {ACTIVATIONS}")
        if self.n_layers < 1:
            raise ValueError(f"n_layers={self.n_layers}: the Linearformer needs at least one block")
        if self.d_model < self.n_ctx:
            raise ValueError(
                f"d_model={self.d_model}: must be ≥ n_ctx={self.n_ctx} (embedding width d_model // n_ctx ≥ 1)"
            )

    @property
    def n_heads(self) -> int:
        """1: no attention (lets the population's width checks and softmax scale stay generic)."""
        return 1

    @property
    def d_embed(self) -> int:
        """Embedding width e = d_model // n_ctx."""
        return self.d_model // self.n_ctx

    @property
    def n_tail(self) -> int:
        """Zeros after the concatenated embeddings: d_model mod n_ctx."""
        return self.d_model - self.n_ctx * self.d_embed


class LinearBlock(nn.Module):
    """x ← act(W_in x + b_in), W_in (d, d), no residual (the reference's ``MyLinear``)."""

    d_model: int
    act: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, d_model) → (B, d_model)."""
        w = self.param("W_in", normal(self.d_model), (self.d_model, self.d_model))
        b = self.param("b_in", nn.initializers.zeros, (self.d_model,))
        return activation(self.act, x @ w.T + b)


class Linearformer(nn.Module):
    """The reference's Linearformer (see the module docstring).

    Call with ``tokens`` int32 (B, n_ctx); ``attention_rate`` and ``attn_scale`` are accepted and
    ignored (the transformer's calling convention); returns float32 logits (B, V).
    """

    arch: LinearformerArch

    def setup(self) -> None:
        a = self.arch
        self.W_E = self.param("W_E", normal(a.d_embed), (a.d_embed, a.vocab))
        self.W_U = self.param("W_U", normal(a.vocab), (a.d_model, a.vocab))
        self.blocks = [LinearBlock(a.d_model, a.act, name=f"blocks_{i}") for i in range(a.n_layers)]

    def embed(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings before concatenation: (B, n_ctx) int32 → (B, n_ctx, e) float32."""
        return jnp.take(self.W_E.T, tokens, axis=0)

    def from_embeddings(
        self, emb: jax.Array, attention_rate: jax.Array | None = None, attn_scale: jax.Array | None = None
    ) -> jax.Array:
        """Logits (B, V) from the token embeddings ``emb`` (B, n_ctx, e) (for SPEC §5.1)."""
        x = emb.reshape(emb.shape[0], -1)
        x = jnp.pad(x, ((0, 0), (0, self.arch.d_model - x.shape[1])))
        for block in self.blocks:
            x = block(x)
        return x @ self.W_U

    def __call__(
        self, tokens: jax.Array, attention_rate: jax.Array | None = None, attn_scale: jax.Array | None = None
    ) -> jax.Array:
        return self.from_embeddings(self.embed(tokens))


def resize_params(params: Any, src: LinearformerArch, dst: LinearformerArch) -> Any:
    """Zero-pad or slice Linearformer parameters from width ``src.d_model`` to ``dst.d_model``.

    Works on trees with or without leading run axes. ``W_E`` rows are fitted to e_dst, ``W_U``
    rows, ``b_in`` and the later blocks' ``W_in`` to d_dst; ``blocks_0/W_in`` keeps the input
    layout: column block i (operand i, e_src columns) goes to columns i·e_dst …, and the
    d mod n_ctx tail columns to columns n_ctx·e_dst …. With act(0) = 0 (ReLU, GeLU, tanh) the
    padded entries then get exactly zero activations, gradients, Adam moments and weight decay.

    Raises:
        ValueError: if ``dst`` is wider but its tail (d_dst mod n_ctx) is shorter than ``src``'s,
            so the tail columns of ``src`` would be dropped (or the families' shapes differ).
    """
    for field in ("p", "n_layers", "diff_vocab", "eqn_sign"):
        a, b = getattr(src, field), getattr(dst, field)
        if a != b:
            raise ValueError(f"{field}: cannot resize a Linearformer with {field}={a!r} to one with {b!r}")
    n, d1, e0, e1 = src.n_ctx, dst.d_model, src.d_embed, dst.d_embed
    if dst.d_model >= src.d_model and dst.n_tail < src.n_tail:
        raise ValueError(
            f"d_model: cannot pad a Linearformer of width {src.d_model} to {dst.d_model}: the "
            f"{src.n_tail} tail column(s) of blocks_0/W_in (d_model mod n_ctx={n}) need "
            f"{dst.d_model} mod {n} ≥ {src.n_tail}"
        )

    def first_w_in(x: Any) -> Any:
        x = fit(x, {-2: d1})
        lead = x.shape[:-1]
        blocks = x[..., : n * e0].reshape(*lead, n, e0)
        blocks = fit(blocks, {-1: e1}).reshape(*lead, n * e1)
        tail = fit(x[..., n * e0 :], {-1: dst.n_tail})
        cat = jnp.concatenate if isinstance(x, jax.Array) else np.concatenate
        return cat([blocks, tail], axis=-1)

    def visit(path, x):
        names = [getattr(k, "key", None) for k in path]
        if names[-1] == "W_E":
            return fit(x, {-2: e1})
        if names[-1] == "W_U":
            return fit(x, {-2: d1})
        if names[-1] == "b_in":
            return fit(x, {-1: d1})
        if names[-1] == "W_in":
            return first_w_in(x) if names[-2] == "blocks_0" else fit(x, {-2: d1, -1: d1})
        raise ValueError(f"unexpected Linearformer parameter {'/'.join(map(str, names))}")

    return jax.tree_util.tree_map_with_path(visit, params)
