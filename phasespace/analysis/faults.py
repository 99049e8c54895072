"""Fault isolation in the analysis: degenerate networks get NaN metrics and a flag, never a crash
and never a silent number.

Training already isolates diverging networks (:class:`phasespace.training.step.TrainState`'s
``nonfinite_step``: a network whose loss, parameters or AdamW moments become NaN/inf is frozen at
its last finite state, the others continue bit-identically). A frozen or otherwise degenerate
network still reaches the analysis; :func:`flag_degenerate` marks the metrics that are undefined
for it (SPEC §5.1: "a zero gradient gives NaN plus a flag, never 0 and never a crash").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

FLAGS = (
    "nonfinite_params",
    "nonfinite_logits",
    "constant_logits",
    "zero_gradients",
    "embedding_rank_deficient",
)
"""Degeneracy flags, bit i of the ``degenerate`` mask is ``FLAGS[i]``:

* ``nonfinite_params``: a parameter is NaN/inf (every metric is NaN).
* ``nonfinite_logits``: a logit over the p² pairs is NaN/inf, e.g. after overflow; loss, accuracy
  and distance irrelevance are NaN (argmax over NaN would give a meaningless accuracy).
* ``constant_logits``: the correct-logit table has zero variance; distance irrelevance is 0/0 = NaN.
* ``zero_gradients``: every sampled triple has a zero (or non-finite) logit gradient; gradient
  symmetricity is NaN (SPEC §5.1).
* ``embedding_rank_deficient``: one of the leading principal components of the token embeddings
  has zero variance (e.g. all-zero weights); circularity is NaN.
"""

NAN_IF = {
    "nonfinite_params": None,  # all metrics
    "nonfinite_logits": (
        "loss",
        "accuracy",
        "train_loss",
        "test_loss",
        "train_accuracy",
        "test_accuracy",
        "distance_irrelevance",
        "distance_irrelevance_largest_wrong",
    ),
    "constant_logits": ("distance_irrelevance",),
    "zero_gradients": ("gradient_symmetricity",),
    "embedding_rank_deficient": ("circularity",),
}
"""Metrics set to NaN under each flag (None: all float metrics)."""


def degeneracy_flags(
    params: Any,
    logits: jax.Array,
    correct_logits: jax.Array,
    embedding: jax.Array,
    n_zero_grads: jax.Array,
    n_triples: int,
    n_components: int = 4,
) -> jax.Array:
    """Bit mask of :data:`FLAGS` for one network (vmap over the run axis).

    Args:
        params: the network's parameter tree.
        logits: float32 (p², V), all pairs.
        correct_logits: float32 (p²,), the logit of the correct class per pair.
        embedding: float32 (p, d), the token embeddings W_E[:, :p]ᵀ.
        n_zero_grads: int32 scalar, triples whose gradient-symmetricity cosine is undefined.
        n_triples: the number of sampled triples.
        n_components: principal components used by circularity (SPEC §5.3).

    Returns:
        int32 scalar.
    """
    finite_params = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)]))
    centred = embedding - jnp.mean(embedding, axis=0, keepdims=True)
    s = jnp.linalg.svd(jnp.where(jnp.isfinite(centred), centred, 0.0), compute_uv=False)
    k = min(n_components, *embedding.shape)
    bits = [
        ~finite_params,
        ~jnp.all(jnp.isfinite(logits)),
        jnp.all(correct_logits == correct_logits[0]),
        n_zero_grads >= n_triples,
        jnp.any(s[:k] <= 0.0),
    ]
    return sum(b.astype(jnp.int32) << i for i, b in enumerate(bits))


def flag_degenerate(metrics: dict[str, jax.Array], flags: jax.Array) -> dict[str, jax.Array]:
    """Set the metrics undefined under ``flags`` to NaN (see :data:`NAN_IF`) and add
    ``degenerate`` (the int32 mask) to ``metrics``; one network."""
    out = dict(metrics)
    for i, name in enumerate(FLAGS):
        on = (flags >> i) & 1 == 1
        keys = NAN_IF[name]
        for k in out if keys is None else keys:
            if k in out and jnp.issubdtype(out[k].dtype, jnp.floating):
                out[k] = jnp.where(on, jnp.nan, out[k])
    out["degenerate"] = flags
    return out


def describe_flags(mask: int) -> str:
    """The names of the flags set in ``mask``, joined by ``|`` (empty string when healthy)."""
    return "|".join(name for i, name in enumerate(FLAGS) if (int(mask) >> i) & 1)
