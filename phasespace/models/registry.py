"""Model families: one place that maps a static architecture to its Flax module, parameter
padding, embedding tables and training-recipe defaults, so populations, training and analysis
serve transformers (SPEC §2), the appendix MLP models (SPEC §3) and the reference's
attention-free Linearformer with the same code.

An *architecture* is a frozen dataclass: :class:`~phasespace.models.transformer.TransformerArch`,
:class:`~phasespace.models.mlp.MLPArch` or
:class:`~phasespace.models.linearformer.LinearformerArch`. All expose ``p``, ``d_model``, ``n_heads``,
``task``, ``vocab``, ``n_ctx``, ``diff_vocab``, ``eqn_sign`` and ``with_width``; their modules
share the calling convention ``apply(params, tokens, attention_rate, attn_scale) → logits (B, V)``
and a ``from_embeddings(emb, attention_rate, attn_scale)`` method.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from phasespace.defaults import MODEL_FAMILIES, RECIPE_DEFAULTS, recipe_family
from phasespace.models.linearformer import Linearformer, LinearformerArch
from phasespace.models.linearformer import resize_params as resize_linearformer_params
from phasespace.models.mlp import MLP_KINDS, MLPArch, MLPModel
from phasespace.models.mlp import resize_params as resize_mlp_params
from phasespace.models.transformer import Transformer, TransformerArch
from phasespace.models.transformer import resize_params as resize_transformer_params

Arch = TransformerArch | MLPArch | LinearformerArch

_KIND_TO_FAMILY = {v: k for k, v in MODEL_FAMILIES.items() if v is not None}


def family(arch: Arch) -> str:
    """The family name of an architecture (a key of :data:`phasespace.defaults.MODEL_FAMILIES`)."""
    if isinstance(arch, MLPArch):
        return _KIND_TO_FAMILY[arch.kind]
    if isinstance(arch, TransformerArch):
        return "transformer"
    if isinstance(arch, LinearformerArch):
        return "linearformer"
    raise TypeError(f"arch={arch!r}: not a TransformerArch, MLPArch or LinearformerArch")


def make_arch(
    model: str,
    p: int,
    d_model: int,
    n_layers: int = 1,
    n_heads: int = 4,
    act: str = "relu",
    diff_vocab: bool = False,
    eqn_sign: bool = False,
) -> Arch:
    """Static architecture of family ``model`` (MLP models ignore the transformer-only fields,
    the Linearformer ignores ``n_heads``).

    Raises:
        ValueError: unknown ``model``, naming the allowed families.
    """
    if model not in MODEL_FAMILIES:
        raise ValueError(f"model={model!r}: must be one of {list(MODEL_FAMILIES)}")
    kind = MODEL_FAMILIES[model]
    if kind is not None:
        return MLPArch(p=p, d_model=d_model, kind=kind)
    if model == "linearformer":
        return LinearformerArch(
            p=p, d_model=d_model, n_layers=n_layers, act=act, diff_vocab=diff_vocab, eqn_sign=eqn_sign
        )
    return TransformerArch(
        p=p,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        act=act,
        diff_vocab=diff_vocab,
        eqn_sign=eqn_sign,
    )


def make_model(arch: Arch) -> nn.Module:
    """The Flax module of ``arch``: ``apply(params, tokens (B, n_ctx) int32, attention_rate,
    attn_scale) → logits (B, V) float32`` (MLP models and the Linearformer ignore the last two)."""
    if isinstance(arch, MLPArch):
        return MLPModel(arch)
    if isinstance(arch, LinearformerArch):
        return Linearformer(arch)
    return Transformer(arch)


def embed_method(arch: Arch) -> str:
    """Name of the module method mapping tokens (B, n_ctx) to token embeddings (B, n_ctx, e)
    before the positional embedding (the Linearformer: before the concatenation), for gradient
    symmetricity (SPEC §5.1)."""
    return "embed_tokens" if isinstance(arch, MLPArch) else "embed"


def resize_params(params: Any, src: Arch, dst: Arch) -> Any:
    """Zero-pad or slice parameters between widths ``src.d_model`` and ``dst.d_model`` (works
    on trees with or without leading run axes; see each family's ``resize_params``)."""
    if isinstance(src, MLPArch):
        return resize_mlp_params(params, src, dst)
    if isinstance(src, LinearformerArch):
        return resize_linearformer_params(params, src, dst)
    return resize_transformer_params(params, src, dst)


def recipe_defaults(arch: Arch) -> dict[str, Any]:
    """Optimizer defaults of the family (:data:`phasespace.defaults.RECIPE_DEFAULTS`)."""
    return dict(RECIPE_DEFAULTS[recipe_family(family(arch))])


# --------------------------------------------------------------------------------------------- #
# Embedding tables (for circularity, key frequencies and circle isolation, SPEC §5.3–5.5)


def shares_table(arch: Arch) -> bool:
    """True when both operands read the same embedding table (no separate vocabulary, not α′)."""
    if isinstance(arch, MLPArch):
        return not arch.two_tables
    return not arch.diff_vocab


def embedding_tables(arch: Arch, params: Any) -> tuple[Any, Any]:
    """The operand embedding tables of one network (no run axis).

    Returns:
        ``(table_a, table_b)``, each (p, e) float32: row t is the embedding of operand value t at
        position 0 (a) and 1 (b). For the transformer and the Linearformer table_a = W_E[:, :p]ᵀ
        and table_b = W_E[:, p:2p]ᵀ with the separate vocabulary, else the same array (W_E is
        (e, V), e = d_model // n_ctx, for the Linearformer); for MLP models the
        ``embed`` table (``embed1``/``embed2`` for α′).
    """
    p = arch.p
    P = params["params"]
    if isinstance(arch, MLPArch):
        if arch.two_tables:
            return P["embed1"]["weight"], P["embed2"]["weight"]
        t = P["embed"]["weight"]
        return t, t
    w_e = P["W_E"]
    a = w_e[:, :p].T
    return (a, w_e[:, p : 2 * p].T) if arch.diff_vocab else (a, a)


def set_embedding_tables(arch: Arch, params: Any, table_a: Any, table_b: Any | None = None) -> Any:
    """``params`` with the operand tables replaced (inverse of :func:`embedding_tables`); every
    other weight (including the equals token's embedding) is unchanged. ``table_b`` is ignored
    when :func:`shares_table`."""
    p = arch.p
    P = dict(params["params"])
    if isinstance(arch, MLPArch):
        if arch.two_tables:
            P["embed1"] = {"weight": table_a}
            P["embed2"] = {"weight": table_b}
        else:
            P["embed"] = {"weight": table_a}
        return {**params, "params": P}
    w_e = jnp.asarray(P["W_E"]).at[:, :p].set(table_a.T)
    if arch.diff_vocab:
        w_e = w_e.at[:, p : 2 * p].set(table_b.T)
    P["W_E"] = w_e
    return {**params, "params": P}


# --------------------------------------------------------------------------------------------- #
# (De)serialisation, for the arrays written beside a sweep


def arch_columns(arch: Arch) -> dict[str, Any]:
    """The runs-table columns of an architecture: ``model``, ``p``, ``d_model``, ``n_layers``,
    ``act``, ``diff_vocab``, ``eqn_sign`` (families without some of them report their fixed
    value, e.g. an MLP model's ``n_layers`` 1 and ``act`` "relu")."""
    return {
        "model": family(arch),
        "p": arch.p,
        "d_model": arch.d_model,
        "n_layers": arch.n_layers,
        "act": arch.act,
        "diff_vocab": arch.diff_vocab,
        "eqn_sign": arch.eqn_sign,
    }


def arch_to_dict(arch: Arch) -> dict[str, Any]:
    """JSON-able description of an architecture (inverse: :func:`arch_from_dict`): the fields
    :func:`make_arch` takes for its family (MLP models: model, p, d_model; the transformer adds
    ``n_heads`` to :func:`arch_columns`)."""
    if isinstance(arch, MLPArch):
        return {"model": family(arch), "p": arch.p, "d_model": arch.d_model}
    d = arch_columns(arch)
    if isinstance(arch, TransformerArch):
        d["n_heads"] = arch.n_heads
    return d


def arch_from_dict(d: dict[str, Any]) -> Arch:
    """Rebuild an architecture written by :func:`arch_to_dict`."""
    d = dict(d)
    return make_arch(d.pop("model"), **d)


__all__ = [
    "MLP_KINDS",
    "Arch",
    "LinearformerArch",
    "MLPArch",
    "TransformerArch",
    "arch_columns",
    "arch_from_dict",
    "arch_to_dict",
    "embed_method",
    "embedding_tables",
    "family",
    "make_arch",
    "make_model",
    "recipe_defaults",
    "resize_params",
    "set_embedding_tables",
    "shares_table",
]
