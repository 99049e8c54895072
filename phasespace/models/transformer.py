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
A network may be zero-padded to a larger bucket width (see :mod:`phasespace.population`);
the softmax scale 1/√d_head of its *true* width is then passed in as data.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from phasespace.data import Task

ACTIVATIONS = ("relu", "gelu")


@dataclasses.dataclass(frozen=True)
class TransformerArch:
    """Static shape of a transformer bucket: everything that changes the compiled program.

    Attributes:
        p: modulus.
        d_model: residual width (the bucket's padded width inside a population).
        n_layers: number of blocks (1–4 in the paper).
        n_heads: attention heads H (4 in the paper).
        act: "relu" or "gelu" (exact erf form).
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
    def task(self) -> Task:
        return Task(self.p, self.diff_vocab, self.eqn_sign)

    @property
    def vocab(self) -> int:
        """Vocabulary size V (SPEC §1)."""
        return self.task.vocab

    @property
    def n_ctx(self) -> int:
        """Sequence length: 2, or 3 with the equals token."""
        return self.task.n_ctx

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_mlp(self) -> int:
        return 4 * self.d_model

    def with_width(self, d_model: int) -> TransformerArch:
        return dataclasses.replace(self, d_model=d_model)


def _normal(divisor: float):
    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.normal(key, shape, dtype) / math.sqrt(divisor)

    return init


def activation(name: str, x: jax.Array) -> jax.Array:
    """ReLU, or GeLU in its exact erf form (PyTorch's default ``F.gelu``)."""
    if name == "relu":
        return jax.nn.relu(x)
    return jax.nn.gelu(x, approximate=False)


def mix_attention(pattern: jax.Array, attention_rate: jax.Array) -> jax.Array:
    """M′ = α·M + (1 − α)·J with J the all-ones matrix (SPEC §2; rows sum to n_ctx − α(n_ctx−1))."""
    return attention_rate * pattern + (1.0 - attention_rate)


class Block(nn.Module):
    """One residual block: x ← x + Attn(x); x ← x + MLP(x). No LayerNorm, no attention bias."""

    arch: TransformerArch

    def setup(self) -> None:
        a = self.arch
        d, h, dh, dm = a.d_model, a.n_heads, a.d_head, a.d_mlp
        self.W_Q = self.param("W_Q", _normal(d), (h, dh, d))
        self.W_K = self.param("W_K", _normal(d), (h, dh, d))
        self.W_V = self.param("W_V", _normal(d), (h, dh, d))
        self.W_O = self.param("W_O", _normal(d), (d, h * dh))
        self.W_in = self.param("W_in", _normal(dm), (dm, d))
        self.b_in = self.param("b_in", nn.initializers.zeros, (dm,))
        self.W_out = self.param("W_out", _normal(d), (d, dm))
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
        self.W_E = self.param("W_E", _normal(a.d_model), (a.d_model, a.vocab))
        self.W_pos = self.param("W_pos", _normal(a.d_model), (a.n_ctx, a.d_model))
        self.W_U = self.param("W_U", _normal(a.vocab), (a.d_model, a.vocab))
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
