"""Transformer with attention rate α (SPEC §2), written in Flax.

Parameter layout (per network, no run axis; the population stacks a leading run axis R):

==================  ==========================  ==================================
name                shape                       init: N(0, 1) divided by
==================  ==========================  ==================================
``W_E``             (d_model, V)                √d_model
``W_pos``           (n_ctx, d_model)            √d_model
``blocks_i/W_Q``    (n_heads, d_head, d_model)  √d_model   (same for W_K, W_V)
``blocks_i/W_O``    (d_model, n_heads·d_head)   √d_model
``blocks_i/W_in``   (d_mlp, d_model)            √d_mlp
``blocks_i/b_in``   (d_mlp,)                    zeros
``blocks_i/W_out``  (d_model, d_mlp)            √d_model
``blocks_i/b_out``  (d_model,)                  zeros
``W_U``             (d_model, V)                √V
==================  ==========================  ==================================

These are the reference implementation's shapes, so its checkpoints load without transposes.
A network may be zero-padded to a larger bucket width (see :mod:`phasespace.population.stack`);
the softmax scale 1/√d_head of its *true* width is then passed in as data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from phasespace.defaults import ACTIVATIONS
from phasespace.models.init import TaskShape, fit, normal


@dataclasses.dataclass(frozen=True)
class TransformerArch(TaskShape):
    """Static shape of a transformer bucket: everything that changes the compiled program.

    Attributes:
        p: modulus.
        d_model: residual width (the bucket's padded width inside a population).
        n_layers: number of blocks (1–4 in the paper).
        n_heads: attention heads H (4 in the paper).
        act: "relu", "gelu" (exact erf form) or "tanh".
        diff_vocab: separate operand vocabulary (SPEC §1).
        eqn_sign: equals token appended (SPEC §1).
    """

    p: int
    d_model: int
    n_layers: int = 1
    n_heads: int = 4
    act: str = "relu"
    diff_vocab: bool = False
    eqn_sign: bool = False

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act={self.act!r}: must be one of {ACTIVATIONS}")
        if self.d_model < self.n_heads:
            raise ValueError(
                f"d_model={self.d_model}: must be ≥ n_heads={self.n_heads} (d_head = floor(d/H))"
            )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_mlp(self) -> int:
        return 4 * self.d_model


def activation(name: str, x: jax.Array) -> jax.Array:
    """The reference MLP's nonlinearity ``act_fn`` (SPEC §2): ReLU, GeLU in its exact erf form
    (PyTorch's default ``F.gelu``) or tanh (``F.tanh``), element-wise on any shape.

    Raises:
        ValueError: ``name`` not in :data:`phasespace.defaults.ACTIVATIONS`.
    """
    if name == "relu":
        return jax.nn.relu(x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "tanh":
        return jnp.tanh(x)
    raise ValueError(f"act={name!r}: must be one of {ACTIVATIONS}")


def mix_attention(pattern: jax.Array, attention_rate: jax.Array) -> jax.Array:
    """M′ = α·M + (1 − α)·J with J the all-ones matrix (SPEC §2; rows sum to n_ctx − α(n_ctx−1))."""
    return attention_rate * pattern + (1.0 - attention_rate)


class Block(nn.Module):
    """One residual block: x ← x + Attn(x); x ← x + MLP(x). No LayerNorm, no attention bias."""

    arch: TransformerArch

    def setup(self) -> None:
        a = self.arch
        d, h, dh, dm = a.d_model, a.n_heads, a.d_head, a.d_mlp
        self.W_Q = self.param("W_Q", normal(d), (h, dh, d))
        self.W_K = self.param("W_K", normal(d), (h, dh, d))
        self.W_V = self.param("W_V", normal(d), (h, dh, d))
        self.W_O = self.param("W_O", normal(d), (d, h * dh))
        self.W_in = self.param("W_in", normal(dm), (dm, d))
        self.b_in = self.param("b_in", nn.initializers.zeros, (dm,))
        self.W_out = self.param("W_out", normal(d), (d, dm))
        self.b_out = self.param("b_out", nn.initializers.zeros, (d,))

    def __call__(
        self, x: jax.Array, attention_rate: jax.Array, attn_scale: jax.Array, last_only: bool
    ) -> jax.Array:
        """x: (B, n_ctx, d_model) → (B, n_ctx, d_model), or (B, 1, d_model) when ``last_only``.

        ``last_only`` computes queries and the MLP at the last position alone: in the last block
        nothing else can reach the logits (SPEC §2 allows skipping such work).
        """
        xq = x[:, -1:, :] if last_only else x
        q = jnp.einsum("hed,bqd->bhqe", self.W_Q, xq)
        k = jnp.einsum("hed,bkd->bhke", self.W_K, x)
        v = jnp.einsum("hed,bkd->bhke", self.W_V, x)
        scores = jnp.einsum("bhqe,bhke->bhqk", q, k) * attn_scale
        mixed = mix_attention(jax.nn.softmax(scores, axis=-1), attention_rate)
        z = jnp.einsum("bhqk,bhke->bqhe", mixed, v)
        z = z.reshape(z.shape[0], z.shape[1], -1)
        x = xq + jnp.einsum("df,bqf->bqd", self.W_O, z)
        pre = jnp.einsum("md,bqd->bqm", self.W_in, x) + self.b_in
        post = activation(self.arch.act, pre)
        return x + jnp.einsum("dm,bqm->bqd", self.W_out, post) + self.b_out


class Transformer(nn.Module):
    """The paper's transformer with attention rate (SPEC §2).

    Call with ``tokens`` int32 (B, n_ctx), ``attention_rate`` α (scalar float32 in [0, 1]) and
    ``attn_scale`` (scalar float32, 1/√d_head of the network's true width); returns float32 logits
    of shape (B, V) at the last position.
    """

    arch: TransformerArch

    def setup(self) -> None:
        a = self.arch
        self.W_E = self.param("W_E", normal(a.d_model), (a.d_model, a.vocab))
        self.W_pos = self.param("W_pos", normal(a.d_model), (a.n_ctx, a.d_model))
        self.W_U = self.param("W_U", normal(a.vocab), (a.d_model, a.vocab))
        self.blocks = [Block(a, name=f"blocks_{i}") for i in range(a.n_layers)]

    def embed(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings before the positional embedding: (B, n_ctx) → (B, n_ctx, d_model)."""
        return jnp.take(self.W_E.T, tokens, axis=0)

    def from_embeddings(self, emb: jax.Array, attention_rate: jax.Array, attn_scale: jax.Array) -> jax.Array:
        """Logits (B, V) from token embeddings ``emb`` (B, n_ctx, d_model) (for SPEC §5.1)."""
        x = emb + self.W_pos
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            x = block(x, attention_rate, attn_scale, last_only=i == n - 1)
        return x[:, -1, :] @ self.W_U

    def __call__(self, tokens: jax.Array, attention_rate: jax.Array, attn_scale: jax.Array) -> jax.Array:
        return self.from_embeddings(self.embed(tokens), attention_rate, attn_scale)


def resize_params(params: Any, src: TransformerArch, dst: TransformerArch) -> Any:
    """Zero-pad or slice transformer parameters from width ``src.d_model`` to ``dst.d_model``.

    Works on trees with or without leading run axes (the trailing axes are resized). Heads keep
    their block structure: W_Q (H, d_head, d) → (H, D_head, D) and W_O (d, H·d_head) →
    (D, H·D_head) head by head.
    """
    d0, d1 = src.d_model, dst.d_model
    h0, h1 = src.d_head, dst.d_head
    _m0, m1 = src.d_mlp, dst.d_mlp
    H = src.n_heads

    def head_o(x: Any) -> Any:
        lead = x.shape[:-2]
        x = x.reshape(*lead, d0, H, h0)
        x = fit(x, {-3: d1, -1: h1})
        return x.reshape(*lead, d1, H * h1)

    rules = {
        "W_E": lambda x: fit(x, {-2: d1}),
        "W_U": lambda x: fit(x, {-2: d1}),
        "W_pos": lambda x: fit(x, {-1: d1}),
        "W_Q": lambda x: fit(x, {-2: h1, -1: d1}),
        "W_K": lambda x: fit(x, {-2: h1, -1: d1}),
        "W_V": lambda x: fit(x, {-2: h1, -1: d1}),
        "W_O": head_o,
        "W_in": lambda x: fit(x, {-2: m1, -1: d1}),
        "b_in": lambda x: fit(x, {-1: m1}),
        "W_out": lambda x: fit(x, {-2: d1, -1: m1}),
        "b_out": lambda x: fit(x, {-1: d1}),
    }

    def visit(path, x):
        return rules[path[-1].key](x)

    return jax.tree_util.tree_map_with_path(visit, params)
