"""A population: many networks of one bucket (static shape), stacked along a leading run axis R.

Static shape (the bucket) vs per-network data is the engine's one idea: everything that
changes the compiled program lives in :class:`~phasespace.models.transformer.TransformerArch`; each
network's seed, true width, attention rate, learning rate, weight decay, train split and labels
(its operation) are arrays with a leading run axis, fed to one compiled step.

Each network is initialised *at its true width* from its own seed (so its weights do not depend
on the bucket or on the other networks) and zero-padded to the bucket width D. With no LayerNorm
the padded entries get exactly zero gradient, Adam moments and weight decay, so the padded network
computes the same function and trains identically (the tests
``test_padded_params_equal_true_width_after_20_steps`` and ``test_padding_is_exact``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phasespace.models.registry import make_model, resize_params
from phasespace.models.transformer import TransformerArch
from phasespace.spec.networks import NetworkSpec, Recipe
from phasespace.tasks import operation_labels, split_rank, train_mask


@functools.lru_cache(maxsize=256)
def _init_fn(arch: TransformerArch):
    model = make_model(arch)
    tokens = jnp.zeros((1, arch.n_ctx), jnp.int32)

    def init(key: jax.Array) -> Any:
        return model.init(key, tokens, jnp.float32(1.0), jnp.float32(1.0))

    return jax.jit(jax.vmap(init))


def init_params(arch: TransformerArch, seeds: Sequence[int]) -> Any:
    """Initial parameters of networks at width ``arch.d_model`` (SPEC §2 init divisors).

    Returns:
        Flax parameter tree whose leaves have a leading run axis of length ``len(seeds)``; network
        i depends only on ``seeds[i]`` and ``arch``.
    """
    keys = jax.vmap(jax.random.key)(jnp.asarray(np.asarray(seeds, dtype=np.uint32)))
    return _init_fn(arch)(keys)


def pad_params(params: Any, true: TransformerArch, bucket: TransformerArch) -> Any:
    """Zero-pad parameters of width ``true.d_model`` to ``bucket.d_model``.

    Works on trees with or without leading run axes (padding applies to the trailing axes).
    Heads keep their block structure: W_Q (H, d_head, d) → (H, D_head, D) and
    W_O (d, H·d_head) → (D, H·D_head) head by head.
    """
    return resize_params(params, true, bucket)


def unpad_params(params: Any, bucket: TransformerArch, true: TransformerArch) -> Any:
    """Slice a padded network back to its true width (inverse of :func:`pad_params`)."""
    return resize_params(params, bucket, true)


def attn_scale(d_model: int, n_heads: int = 4) -> float:
    """Softmax scale 1/√d_head with d_head = floor(d_model / n_heads) of the true width (SPEC §2)."""
    return 1.0 / math.sqrt(d_model // n_heads)


@dataclasses.dataclass
class Population:
    """Networks of one bucket, stacked along the run axis R.

    Attributes:
        arch: the bucket's static architecture (padded width D).
        networks: the R network specs, in run-axis order.
        params: Flax parameter tree, leaves (R, ...) float32, zero-padded to D.
        hparams: per-network data, each with leading axis R: ``attention_rate`` (R,) float32,
            ``attn_scale`` (R,) float32, ``lr`` (R,) float32, ``weight_decay`` (R,) float32,
            ``train_mask`` (R, p²) bool, ``labels`` (R, p²) int32 (each network's operation); with
            minibatches also the data order (:func:`network_hparams`).
    """

    arch: TransformerArch
    networks: list[NetworkSpec]
    params: Any
    hparams: dict[str, jax.Array]

    @property
    def size(self) -> int:
        return len(self.networks)


def build_population(
    arch: TransformerArch, networks: Sequence[NetworkSpec], recipe: Recipe | None = None
) -> Population:
    """Initialise ``networks`` at their true widths and stack them, padded to ``arch.d_model``
    (``recipe``: the training recipe, whose minibatches need each network's data order).

    Raises:
        ValueError: if a network's width exceeds the bucket width, naming the network.
    """
    networks = list(networks)
    if not networks:
        raise ValueError("networks: a population needs at least one network")
    for i, n in enumerate(networks):
        if not arch.n_heads <= n.d_model <= arch.d_model:
            raise ValueError(
                f"networks[{i}].d_model={n.d_model}: must be in [{arch.n_heads}, "
                f"{arch.d_model}] (n_heads ≤ d_model ≤ bucket width)"
            )
    by_width: dict[int, list[int]] = {}
    for i, n in enumerate(networks):
        by_width.setdefault(n.d_model, []).append(i)
    parts: list[tuple[list[int], Any]] = []
    for d, idx in by_width.items():
        true = arch.with_width(d)
        p = init_params(true, [networks[i].seed for i in idx])
        parts.append((idx, pad_params(p, true, arch)))
    order = np.argsort(np.concatenate([np.asarray(idx) for idx, _ in parts]))
    params = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0)[order], *[p for _, p in parts])
    hparams = network_hparams(arch, networks, recipe)
    return Population(arch=arch, networks=networks, params=params, hparams=hparams)


def network_hparams(
    arch: TransformerArch, networks: Sequence[NetworkSpec], recipe: Recipe | None = None
) -> dict[str, jax.Array]:
    """The per-network data of :class:`Population` (``hparams``) for ``networks`` in ``arch``'s
    bucket: ``attention_rate``, ``attn_scale``, ``lr``, ``weight_decay`` (R,) float32,
    ``train_mask`` (R, p²) bool and ``labels`` (R, p²) int32, the labels of each network's
    operation in :func:`~phasespace.tasks.all_pairs` order (:func:`~phasespace.tasks.operation_labels`).
    With minibatches (``recipe.batch_size`` an integer) also the data order: ``data_rank`` (R, p²)
    int32, each pair's place in the fixed epoch order (:func:`phasespace.tasks.split_rank`), or with
    ``recipe.shuffle`` ``data_seed`` (R,) uint32, the split seed the per-epoch orders are drawn from
    (:func:`phasespace.training.step.batch_mask`).

    Raises:
        phasespace.operations.OperationError: a network's operation is not registered, or its
            function returns invalid labels.
    """
    tables = {op: operation_labels(op, arch.p) for op in dict.fromkeys(n.operation for n in networks)}
    hp: dict[str, jax.Array] = {
        "attention_rate": jnp.asarray([n.attention_rate for n in networks], jnp.float32),
        "attn_scale": jnp.asarray([attn_scale(n.d_model, arch.n_heads) for n in networks], jnp.float32),
        "lr": jnp.asarray([n.lr for n in networks], jnp.float32),
        "weight_decay": jnp.asarray([n.weight_decay for n in networks], jnp.float32),
        "train_mask": jnp.asarray(
            np.stack([train_mask(arch.p, n.train_fraction, n.split_seed) for n in networks])
        ),
        "labels": jnp.asarray(np.stack([tables[n.operation] for n in networks]), jnp.int32),
    }
    if recipe is not None and recipe.batch_size is not None:
        if recipe.shuffle:
            hp["data_seed"] = jnp.asarray(np.asarray([n.split_seed for n in networks], np.uint32))
        else:
            ranks = [split_rank(arch.p, n.train_fraction, n.split_seed) for n in networks]
            hp["data_rank"] = jnp.asarray(np.stack(ranks))
    return hp
