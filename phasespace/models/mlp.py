"""The MLP ("linear") models of the paper's appendix (SPEC §3), written in Flax.

Five families, named as in the paper and keyed as in the reference implementation:

=========  ===  ======  ==============================================================
paper      key  e       hidden activation h (width d_model = d_hidden, 256 in the paper)
=========  ===  ======  ==============================================================
α          A    d       ReLU(W₁(E_a + E_b) + b₁)
α′         X    d       ReLU(W₁(E¹_a + E²_b) + b₁), two embedding tables
β          B    d       ReLU(W₂ ReLU(W₁(E_a + E_b) + b₁) + b₂)
γ          C    d       ReLU(W₂ ReLU(W₁E_a + W₁E_b + 2b₁) + b₂)
δ          D    d // 2  ReLU(W₁ [E_a ; E_b] + b₁), concatenation
=========  ===  ======  ==============================================================

logits = h · Uᵀ over the p classes. Parameters keep the reference ``state_dict`` layout so its
checkpoints load by nesting the keys (``l1.weight`` → ``params["l1"]["weight"]``):

=====================  ==========  ==========================================
name                   shape       init
=====================  ==========  ==========================================
``embed/weight``       (p, e)      N(0, 1) / √(d // 2)   (``embed1``, ``embed2`` for α′)
``unembed/weight``     (p, d)      N(0, 1) / √d
``l1/weight``          (d, in)     U(±1/√in), in = e (2e for δ)   (PyTorch ``Linear``)
``l1/bias``            (d,)        U(±1/√in)
``l2/weight``          (d, d)      U(±1/√d)   (β, γ only)
``l2/bias``            (d,)        U(±1/√d)
=====================  ==========  ==========================================

The modules share the transformer's calling convention (``__call__(tokens, attention_rate,
attn_scale)``, ``embed``, ``from_embeddings``) so populations, training and analysis treat both
alike; the attention rate and softmax scale are accepted and ignored.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from phasespace.models.init import TaskShape, fit, normal

MLP_KINDS = {"A": "α", "X": "α′", "B": "β", "C": "γ", "D": "δ"}
"""Reference key → paper name of the MLP models (SPEC §3)."""


@dataclasses.dataclass(frozen=True)
class MLPArch(TaskShape):
    """Static shape of an MLP-model bucket.

    Attributes:
        p: modulus (vocabulary and classes are the p residues; no separate vocabulary, no
            equals token).
        d_model: hidden width d_hidden (the bucket's padded width inside a population).
        kind: reference key, one of :data:`MLP_KINDS` ("A", "X", "B", "C", "D").
    """

    p: int
    d_model: int = 256
    kind: str = "B"

    def __post_init__(self) -> None:
        if self.kind not in MLP_KINDS:
            raise ValueError(f"kind={self.kind!r}: must be one of {sorted(MLP_KINDS)}")
        if self.d_model < 2:
            raise ValueError(f"d_model={self.d_model}: the hidden width must be ≥ 2")

    # Attributes shared with TransformerArch so generic code (tables, gradient-symmetricity
    # sample, populations) works unchanged.
    @property
    def diff_vocab(self) -> bool:
        return False

    @property
    def eqn_sign(self) -> bool:
        return False

    @property
    def n_heads(self) -> int:
        """1: no attention (lets the population's width checks and softmax scale stay generic)."""
        return 1

    @property
    def n_layers(self) -> int:
        return 2 if self.kind in ("B", "C") else 1

    @property
    def act(self) -> str:
        return "relu"

    @property
    def d_embed(self) -> int:
        """Embedding width e: d_model // 2 for δ (concatenation), d_model otherwise."""
        return self.d_model // 2 if self.kind == "D" else self.d_model

    @property
    def d_in(self) -> int:
        """Input width of ``l1``: 2e for δ, e otherwise."""
        return 2 * self.d_embed if self.kind == "D" else self.d_embed

    @property
    def two_tables(self) -> bool:
        """α′ has separate embedding tables for the two operands."""
        return self.kind == "X"


def _uniform(bound: float):
    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class _Table(nn.Module):
    """An embedding / unembedding table ``weight`` (n, width) (PyTorch ``nn.Embedding``)."""

    n: int
    width: int
    divisor: float

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("weight", normal(self.divisor), (self.n, self.width))


class _Linear(nn.Module):
    """y = x Wᵀ + b with PyTorch ``nn.Linear`` layout and default init (U(±1/√fan_in))."""

    d_in: int
    d_out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bound = 1.0 / math.sqrt(self.d_in)
        w = self.param("weight", _uniform(bound), (self.d_out, self.d_in))
        b = self.param("bias", _uniform(bound), (self.d_out,))
        return x @ w.T + b


class MLPModel(nn.Module):
    """The appendix MLP models (SPEC §3); see the module docstring.

    Call with ``tokens`` int32 (B, 2) (operands a, b < p); returns float32 logits (B, p).
    """

    arch: MLPArch

    def setup(self) -> None:
        a = self.arch
        d, e = a.d_model, a.d_embed
        div = d // 2
        if a.two_tables:
            self.embed1 = _Table(a.p, e, div)
            self.embed2 = _Table(a.p, e, div)
        else:
            self.embed = _Table(a.p, e, div)
        self.unembed = _Table(a.p, d, d)
        self.l1 = _Linear(a.d_in, d)
        if a.kind in ("B", "C"):
            self.l2 = _Linear(d, d)

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings (B, 2) → (B, 2, e): E_a and E_b (E¹_a and E²_b for α′)."""
        if self.arch.two_tables:
            return jnp.stack([self.embed1()[tokens[:, 0]], self.embed2()[tokens[:, 1]]], axis=1)
        return jnp.take(self.embed(), tokens[:, :2], axis=0)

    def from_embeddings(
        self, emb: jax.Array, attention_rate: jax.Array | None = None, attn_scale: jax.Array | None = None
    ) -> jax.Array:
        """Logits (B, p) from the two operand embeddings ``emb`` (B, 2, e) (for SPEC §5.1)."""
        kind = self.arch.kind
        ea, eb = emb[:, 0], emb[:, 1]
        if kind == "D":
            h = jax.nn.relu(self.l1(jnp.concatenate([ea, eb], axis=-1)))
        elif kind == "C":
            h = jax.nn.relu(self.l1(ea) + self.l1(eb))
        else:
            h = jax.nn.relu(self.l1(ea + eb))
        if kind in ("B", "C"):
            h = jax.nn.relu(self.l2(h))
        return h @ self.unembed().T

    def __call__(
        self, tokens: jax.Array, attention_rate: jax.Array | None = None, attn_scale: jax.Array | None = None
    ) -> jax.Array:
        return self.from_embeddings(self.embed_tokens(tokens))


def resize_params(params: Any, src: MLPArch, dst: MLPArch) -> Any:
    """Zero-pad (or slice) MLP-model parameters from width ``src.d_model`` to ``dst.d_model``.

    Works with or without leading run axes. The δ model's ``l1/weight`` keeps its two halves
    (E_a part, E_b part) aligned: (d, 2e) → (D, 2E) half by half. With ReLU (derivative 0 at 0)
    and no normalisation, padded units get exactly zero activations, gradients, Adam moments and
    weight decay, so a padded network computes and trains as the unpadded one.
    """
    if src.kind != dst.kind:
        raise ValueError(f"kind: cannot resize a {src.kind!r} model to {dst.kind!r}")
    d1, e0, e1 = dst.d_model, src.d_embed, dst.d_embed

    def l1_weight(x: Any) -> Any:
        if src.kind != "D":
            return fit(x, {-2: d1, -1: e1})
        lead = x.shape[:-2]
        x = x.reshape(*lead, x.shape[-2], 2, e0)
        x = fit(x, {-3: d1, -1: e1})
        return x.reshape(*lead, d1, 2 * e1)

    def visit(path, x):
        names = [getattr(k, "key", None) for k in path]
        layer, leaf = names[-2], names[-1]
        if layer in ("embed", "embed1", "embed2"):
            return fit(x, {-1: e1})
        if layer == "unembed":
            return fit(x, {-1: d1})
        if layer == "l1":
            return l1_weight(x) if leaf == "weight" else fit(x, {-1: d1})
        if layer == "l2":
            return fit(x, {-2: d1, -1: d1}) if leaf == "weight" else fit(x, {-1: d1})
        raise ValueError(f"unexpected MLP parameter {'/'.join(map(str, names))}")

    return jax.tree_util.tree_map_with_path(visit, params)
