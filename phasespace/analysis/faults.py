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
import numpy as np

FLAGS = (
    "nonfinite_params",
    "nonfinite_logits",
    "constant_logits",
    "zero_gradients",
    "embedding_rank_deficient",
    "not_addition",
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
* ``not_addition``: the network's labels are not (a + b) mod p (another operation,
  :mod:`phasespace.operations`). The metrics whose definition assumes addition are NaN: both
  distance irrelevances (SPEC §5.2: the correct logit indexed by ((a + b) mod p, (a − b) mod p))
  and the Clock/Pizza/accompanying template FVEs of the circles (§5.5); the network is classified
  ``not-addition`` (§5.7). Gradient symmetricity (c is any class), circularity and the key
  frequencies (embeddings only) do not use the operation and are computed as usual.
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
    "not_addition": (
        "distance_irrelevance",
        "distance_irrelevance_largest_wrong",
        "circle_fve_clock",
        "circle_fve_pizza",
        "circle_fve_accompanying",
    ),
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
    addition: jax.Array | bool = True,
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
        addition: bool scalar, whether the network's labels are (a + b) mod p
            (:func:`addition_labels`); False sets ``not_addition``.

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
        ~jnp.asarray(addition, bool),
    ]
    return sum(b.astype(jnp.int32) << i for i, b in enumerate(bits))


def addition_labels(labels: jax.Array, p: int) -> jax.Array:
    """Whether one network's labels int32 (p²,) (:func:`phasespace.tasks.all_pairs` order) are
    those of addition, (a + b) mod p: bool scalar (False for any other operation)."""
    a, b = np.divmod(np.arange(p * p), p)
    return jnp.all(labels == jnp.asarray((a + b) % p, labels.dtype))


def nan_where_flagged(
    metrics: dict[str, jax.Array], flags: jax.Array, only: tuple[str, ...] = FLAGS
) -> dict[str, jax.Array]:
    """``metrics`` (one network) with those undefined under the flags of ``flags`` named in
    ``only`` set to NaN (:data:`NAN_IF`; integer metrics are left as they are)."""
    out = dict(metrics)
    for i, name in enumerate(FLAGS):
        if name not in only:
            continue
        on = (flags >> i) & 1 == 1
        keys = NAN_IF[name]
        for k in out if keys is None else keys:
            if k in out and jnp.issubdtype(out[k].dtype, jnp.floating):
                out[k] = jnp.where(on, jnp.nan, out[k])
    return out


def flag_degenerate(metrics: dict[str, jax.Array], flags: jax.Array) -> dict[str, jax.Array]:
    """Set the metrics undefined under ``flags`` to NaN (see :data:`NAN_IF`) and add
    ``degenerate`` (the int32 mask) to ``metrics``; one network."""
    out = nan_where_flagged(metrics, flags)
    out["degenerate"] = flags
    return out


def describe_flags(mask: int) -> str:
    """The names of the flags set in ``mask``, joined by ``|`` (empty string when healthy)."""
    return "|".join(name for i, name in enumerate(FLAGS) if (int(mask) >> i) & 1)
