"""The vectorized analysis pass: every circuit metric for every network of a population.

Each metric in :mod:`phasespace.analysis.metrics` is a pure per-network function; here they are
composed per network and ``jit(vmap(...))``-ed over the run axis R. The same code runs on trained
populations and on imported reference checkpoints (a population of one).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phasespace.analysis import faults, metrics
from phasespace.defaults import N_TRIPLES, TRIPLE_SEED
from phasespace.models.fast import logits_table
from phasespace.models.registry import embed_method, embedding_tables, make_model
from phasespace.models.transformer import TransformerArch
from phasespace.tasks import all_pairs, encode
from phasespace.training.step import split_statistics

METRICS = (
    "loss",
    "accuracy",
    "gradient_symmetricity",
    "gradient_symmetricity_zero_grads",
    "distance_irrelevance",
    "distance_irrelevance_largest_wrong",
    "circularity",
    "param_norm",
    "degenerate",
)
"""Per-network fields returned by :func:`analyze_population` (besides split-wise accuracy/loss)."""


def analyze_network(
    arch: TransformerArch,
    params: Any,
    attention_rate: jax.Array,
    attn_scale: jax.Array,
    train_mask: jax.Array,
    tokens: jax.Array,
    labels: jax.Array,
    triple_tokens: jax.Array,
    triple_classes: jax.Array,
    fast: bool = True,
) -> dict[str, jax.Array]:
    """All SPEC §5.1–5.3, §5.6 metrics of one network (vmap over the run axis for a population).

    Args:
        arch: static architecture (width may be a padded bucket width).
        params: one network's Flax parameters.
        attention_rate, attn_scale: float32 scalars.
        train_mask: bool (p²,), the network's training pairs.
        tokens: the full table int32 (p², n_ctx).
        labels: int32 (p²,), this network's labels (its operation, :mod:`phasespace.operations`).
        triple_tokens, triple_classes: the gradient-symmetricity sample, (S, n_ctx) and (S,).
        fast: compute the logit table by the exact fast path when the bucket allows it
            (:func:`phasespace.models.fast.logits_table`).

    Returns:
        dict of scalars: ``loss``/``accuracy`` (all p² pairs), ``train_loss``, ``test_loss``,
        ``train_accuracy``, ``test_accuracy`` (float32 from int32 counts, exactly 1.0 when
        perfect), ``gradient_symmetricity`` (SPEC §5.1) and ``gradient_symmetricity_zero_grads``
        (int32), ``distance_irrelevance`` and ``distance_irrelevance_largest_wrong`` (§5.2),
        ``circularity`` (§5.3), ``param_norm`` (L2), and ``degenerate`` (int32 bit mask of
        :data:`phasespace.analysis.faults.FLAGS`; metrics undefined for a degenerate network are NaN).

    Operations: loss and accuracies use the network's own labels; gradient symmetricity (its
    class c is any class) and circularity (embeddings only) do not depend on the operation;
    both distance irrelevances assume addition and are NaN, with the ``not_addition`` flag, for
    labels other than (a + b) mod p (:func:`phasespace.analysis.faults.addition_labels`).
    """
    model = make_model(arch)
    p = arch.p
    logits = logits_table(arch, params, attention_rate, attn_scale, tokens, fast)
    split = split_statistics(logits, labels, train_mask)

    emb = model.apply(params, triple_tokens, method=embed_method(arch))

    def logit_of(e: jax.Array) -> jax.Array:
        return model.apply(params, e[None], attention_rate, attn_scale, method="from_embeddings")[0]

    gs, zero = metrics.gradient_symmetricity(logit_of, emb, triple_classes)
    table_a, _ = embedding_tables(arch, params)
    out = {
        "loss": jnp.mean(split["losses"]),
        **{k: split[k] for k in ("accuracy", "train_loss", "test_loss", "train_accuracy", "test_accuracy")},
        "gradient_symmetricity": gs,
        "gradient_symmetricity_zero_grads": zero,
        "distance_irrelevance": metrics.distance_irrelevance(logits, p),
        "distance_irrelevance_largest_wrong": metrics.distance_irrelevance_largest_wrong(logits, p),
        "circularity": metrics.circularity(table_a),
        "param_norm": metrics.param_norm(params),
    }
    correct_logit = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    addition = faults.addition_labels(labels, p)
    flags = faults.degeneracy_flags(
        params, logits, correct_logit, table_a, zero, triple_classes.shape[0], addition=addition
    )
    return faults.flag_degenerate(out, flags)


def over_networks(fn: Any, in_axes: tuple[int | None, ...]) -> Any:
    """``fn`` of one network over the leading run axis of the arguments whose ``in_axes`` is 0
    (the others are shared): on a CPU one network after another (``lax.map``), so that a network's
    metrics do not depend on the networks analysed with it (a ``vmap`` batches their matmuls, and
    the float32 rounding then depends on the batch: measured 1e-7 on circularity); elsewhere
    ``vmap``."""
    if jax.default_backend() != "cpu":
        return jax.vmap(fn, in_axes=in_axes)

    def mapped(*args: Any) -> Any:
        batched = tuple(a for a, ax in zip(args, in_axes, strict=True) if ax == 0)

        def one(xs: tuple[Any, ...]) -> Any:
            it = iter(xs)
            return fn(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes, strict=True)))

        return jax.lax.map(one, batched)

    return mapped


@functools.lru_cache(maxsize=32)
def _compiled(arch: TransformerArch, fast: bool = True):
    fn = functools.partial(analyze_network, arch, fast=fast)
    return jax.jit(over_networks(fn, (0, 0, 0, 0, None, 0, None, None)))


def analyze_population(
    arch: TransformerArch,
    params: Any,
    attention_rate: Any,
    attn_scale: Any,
    train_mask: Any,
    n_triples: int = N_TRIPLES,
    triple_seed: int = TRIPLE_SEED,
    fast: bool = True,
    labels: Any = None,
) -> dict[str, np.ndarray]:
    """Every metric of :func:`analyze_network` for R networks in one jitted, vmapped call.

    Args:
        arch: the bucket architecture.
        params: parameter tree with leaves (R, ...).
        attention_rate, attn_scale: (R,) float32.
        train_mask: (R, p²) bool.
        n_triples, triple_seed: the gradient-symmetricity sample (SPEC §5.1 reference sample:
            100 triples, ``random.Random(42)``).
        fast: the exact fast logit table where the bucket allows it; False forces the plain model.
        labels: int32 (R, p²), each network's labels (the population's ``hparams["labels"]``);
            None: addition, (a + b) mod p, for every network (the paper's task).

    Returns:
        dict of NumPy arrays of shape (R,).
    """
    tokens, add_labels = all_pairs(arch.task)
    n = len(np.asarray(attention_rate).reshape(-1))
    labels = np.broadcast_to(add_labels, (n, add_labels.shape[0])) if labels is None else labels
    triples = metrics.reference_triples(arch.p, n_triples, triple_seed)
    with jax.default_matmul_precision("highest"):
        out = _compiled(arch, fast)(
            params,
            jnp.asarray(attention_rate, jnp.float32),
            jnp.asarray(attn_scale, jnp.float32),
            jnp.asarray(train_mask, bool),
            jnp.asarray(tokens),
            jnp.asarray(labels, jnp.int32),
            jnp.asarray(encode(arch.task, triples[:, 0], triples[:, 1])),
            jnp.asarray(triples[:, 2]),
        )
    return {k: np.asarray(v) for k, v in out.items()}
