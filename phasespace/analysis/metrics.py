"""Circuit metrics for one network (SPEC §5). Every function is pure and per network: the run axis
is added by ``jax.vmap`` in :mod:`phasespace.analysis.network`.

Notation: Q_abc is the logit of class c for input (a, b); ``logits`` below is the full table of
shape (p², V) in the pair order of :func:`phasespace.tasks.all_pairs` (row i: a = i // p, b = i % p).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phasespace.defaults import CIRCULARITY_COMPONENTS, N_TRIPLES, TRIPLE_SEED

# --------------------------------------------------------------------------------------------- #
# Input layouts: checked on the static shapes (NumPy arrays, JAX arrays and tracers under
# jit/vmap alike), so a transposed or wrongly sized input raises instead of being clamped.


def shape_of(x, name: str) -> tuple[int, ...]:
    """The static shape of an array, a JAX array or a tracer.

    Raises:
        ValueError: naming ``name`` if ``x`` is not an array.
    """
    try:
        return tuple(int(d) for d in np.shape(x))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not an array ({type(x).__name__})") from e


def check_logits(logits, p: int, name: str = "logits") -> tuple[int, int]:
    """Check that ``logits`` is one network's full table (p², V), V ≥ p; returns its shape.

    Raises:
        ValueError: naming the shape found and the layout expected.
    """
    shape = shape_of(logits, name)
    if len(shape) != 2 or shape[0] != p * p or shape[1] < p:
        raise ValueError(
            f"{name}: shape {shape}, expected (p², V) = ({p * p}, V ≥ {p}) for p={p}: one row per "
            "pair (a, b) in all_pairs order (row a·p + b), one column per class (one network; "
            "vmap over the run axis)"
        )
    return shape[0], shape[1]


def check_table(table, name: str = "embedding") -> tuple[int, int]:
    """Check that ``table`` is one network's embedding table (p, d): one row per token value.

    Raises:
        ValueError: naming the shape found and the layout expected.
    """
    shape = shape_of(table, name)
    if len(shape) != 2 or shape[0] < 2 or shape[1] < 1:
        raise ValueError(
            f"{name}: shape {shape}, expected (p, d): one row per token 0…p−1 (p ≥ 2), one column "
            "per embedding dimension (one network; vmap over the run axis)"
        )
    return shape[0], shape[1]


# --------------------------------------------------------------------------------------------- #
# Gradient symmetricity (SPEC §5.1, paper Def. 4.1)


def reference_triples(p: int, n: int = N_TRIPLES, seed: int = TRIPLE_SEED) -> np.ndarray:
    """The reference sample S of (a, b, c) triples for gradient symmetricity (SPEC §5.1).

    All p³ triples in lexicographic order (a, then b, then c), shuffled with Python's
    ``random.Random(seed).shuffle``; the first ``n`` are kept. For p = 59 the first three are
    (29, 1, 57), (49, 36, 24), (40, 38, 8).

    Returns:
        int32 array of shape (n, 3).
    """
    triples = [(a, b, c) for a in range(p) for b in range(p) for c in range(p)]
    random.Random(seed).shuffle(triples)
    return np.asarray(triples[:n], dtype=np.int32)


def gradient_symmetricity(
    logit_from_embeddings: Callable[[jax.Array, jax.Array], jax.Array],
    embeddings: jax.Array,
    classes: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Gradient symmetricity s_g (SPEC §5.1, paper Def. 4.1) of one network.

    s_g = mean over triples of cos(∂Q_abc/∂E_a, ∂Q_abc/∂E_b), where E_a and E_b are the
    token-embedding vectors at positions 0 and 1 *before* the positional embedding is added.

    Args:
        logit_from_embeddings: maps token embeddings of shape (n_ctx, d) to logits (V,).
        embeddings: float32 (S, n_ctx, d): the token embeddings of the S sampled inputs (a, b).
        classes: int32 (S,): the class c of each triple (any class, not necessarily a + b).

    Returns:
        ``(s_g, n_zero)``: float32 scalar in [−1, 1] (not clipped): the mean cosine over the
        triples whose two gradients are both non-zero, NaN if there are none; and int32 scalar,
        the number of triples with a zero gradient (whose cosine is undefined and skipped).
    """

    shape, cshape = shape_of(embeddings, "embeddings"), shape_of(classes, "classes")
    if len(shape) != 3 or shape[1] < 2 or cshape != shape[:1]:
        raise ValueError(
            f"embeddings {shape}, classes {cshape}: expected embeddings (S, n_ctx, d) with "
            "n_ctx ≥ 2 (the token embeddings of S inputs) and classes (S,)"
        )

    def one(emb: jax.Array, c: jax.Array) -> jax.Array:
        g = jax.grad(lambda e: logit_from_embeddings(e)[c])(emb)
        g0, g1 = g[0], g[1]
        n0, n1 = jnp.linalg.norm(g0), jnp.linalg.norm(g1)
        ok = (n0 > 0) & (n1 > 0)
        return jnp.where(ok, jnp.dot(g0, g1) / jnp.where(ok, n0 * n1, 1.0), jnp.nan)

    cos = jax.vmap(one)(embeddings, classes)
    valid = ~jnp.isnan(cos)
    n_valid = jnp.sum(valid)
    mean = jnp.sum(jnp.where(valid, cos, 0.0)) / jnp.maximum(n_valid, 1)
    return jnp.where(n_valid > 0, mean, jnp.nan), (cos.shape[0] - n_valid).astype(jnp.int32)


# --------------------------------------------------------------------------------------------- #
# Distance irrelevance (SPEC §5.2, paper Def. 4.2)


def sum_diff_table(values: jax.Array, p: int) -> jax.Array:
    """Per-pair values re-indexed by sum and difference: the reference code's table behind
    distance irrelevance (SPEC §5.2).

    Args:
        values: (p²,) one value per pair, pair index a·p + b (the order of
            :func:`phasespace.tasks.all_pairs`), any float dtype.
        p: the modulus (odd, so (a, b) → ((a + b) mod p, (a − b) mod p) is a bijection).

    Returns:
        (p, p) array L with L[(a + b) mod p, (a − b) mod p] = values[a·p + b], same dtype.

    Raises:
        ValueError: if ``values`` is not (p²,).
    """
    if shape_of(values, "values") != (p * p,):
        raise ValueError(f"values: shape {shape_of(values, 'values')}, expected (p²,) = ({p * p},)")
    a, b = np.divmod(np.arange(p * p), p)
    return jnp.zeros((p, p), values.dtype).at[(a + b) % p, (a - b) % p].set(values)


def _irrelevance(table: jax.Array) -> jax.Array:
    return jnp.mean(jnp.std(table, axis=0)) / jnp.std(table)


def correct_logits(logits: jax.Array, p: int) -> jax.Array:
    """Q_{ab,(a+b) mod p} for all pairs: (p², V) → (p²,).

    Raises:
        ValueError: if ``logits`` is not (p², V ≥ p) (:func:`check_logits`).
    """
    check_logits(logits, p)
    a, b = np.divmod(np.arange(p * p), p)
    return logits[np.arange(p * p), (a + b) % p]


def largest_wrong_logits(logits: jax.Array, p: int) -> jax.Array:
    """max over c ∈ {0…p−1}, c ≠ (a+b) mod p of Q_abc: (p², V) → (p²,).

    Raises:
        ValueError: if ``logits`` is not (p², V ≥ p) (:func:`check_logits`).
    """
    check_logits(logits, p)
    a, b = np.divmod(np.arange(p * p), p)
    wrong = np.ones((p * p, p), dtype=bool)
    wrong[np.arange(p * p), (a + b) % p] = False
    return jnp.max(jnp.where(wrong, logits[:, :p], -jnp.inf), axis=1)


def distance_irrelevance(logits: jax.Array, p: int) -> jax.Array:
    """Distance irrelevance q of the correct logit (SPEC §5.2, paper Def. 4.2).

    L[(a+b) mod p, (a−b) mod p] = Q_{ab,(a+b)}; q = mean over columns of the population std down
    each column, divided by the population std of all entries
    (``np.std(L, axis=0).mean() / np.std(L)``). Clock → near 1, Pizza → small.

    Defined for addition only (the correct class is (a + b) mod p and L is indexed by a + b and
    a − b): the analysis reports NaN with the ``not_addition`` flag for other operations
    (:data:`phasespace.analysis.faults.NAN_IF`); so does :func:`distance_irrelevance_largest_wrong`.

    Args:
        logits: float32 (p², V) over all pairs in :func:`~phasespace.tasks.all_pairs` order.

    Returns:
        float32 scalar ≥ 0 (NaN when all correct logits are equal).

    Raises:
        ValueError: if ``logits`` is not (p², V ≥ p), e.g. transposed or for another p.
    """
    return _irrelevance(sum_diff_table(correct_logits(logits, p), p))


def distance_irrelevance_largest_wrong(logits: jax.Array, p: int) -> jax.Array:
    """Distance irrelevance computed on the largest *wrong* logit (SPEC §5.2).

    The variant behind the published sweep tables' ``distance_irrelevance`` column: the same
    statistic as :func:`distance_irrelevance` with L filled by max_{c≠a+b, c<p} Q_abc.

    Raises:
        ValueError: if ``logits`` is not (p², V ≥ p).
    """
    return _irrelevance(sum_diff_table(largest_wrong_logits(logits, p), p))


# --------------------------------------------------------------------------------------------- #
# Circularity and key frequencies (SPEC §5.3, §5.4)


class PCA(NamedTuple):
    """Centred PCA of a table (p, e): ``mean`` (e,), ``scores`` (p, r) = U·S (score vectors u_j),
    ``directions`` (r, e) = Vᵀ, ``singular_values`` (r,), r = min(p, e), in decreasing order of
    explained variance."""

    mean: jax.Array
    scores: jax.Array
    directions: jax.Array
    singular_values: jax.Array


def pca(table: jax.Array) -> PCA:
    """Centred PCA of an embedding table (p, e) (one row per token) by SVD (see :class:`PCA`);
    the one PCA of circularity (SPEC §5.3), key frequencies and circle isolation (§5.4, §5.5).

    Raises:
        ValueError: if ``table`` is not (p, e).
    """
    check_table(table, "table")
    mean = jnp.mean(table, axis=0)
    u, s, vt = jnp.linalg.svd(table - mean, full_matrices=False)
    return PCA(mean, u * s, vt, s)


def fourier_power(scores: jax.Array) -> jax.Array:
    """Normalised Fourier power of score vectors (SPEC §5.3).

    For u ∈ Rᵖ and k = 1…p−1: 2·|Σ_t u_t e^{−2πikt/p}|² / (p · Σ_t u_t²).

    Args:
        scores: (p, n) score vectors.

    Returns:
        float32 (n, p − 1): entry [j, k − 1] is the power of component j at frequency k.

    Raises:
        ValueError: if ``scores`` is not (p, n).
    """
    check_table(scores, "scores")
    p = scores.shape[0]
    t = np.arange(p)
    k = np.arange(1, p)
    angle = 2 * np.pi * np.outer(k, t) / p
    cos, sin = jnp.asarray(np.cos(angle), jnp.float32), jnp.asarray(np.sin(angle), jnp.float32)
    re = cos @ scores
    im = sin @ scores
    norm = p * jnp.sum(scores * scores, axis=0)
    return (2 * (re * re + im * im) / norm).T


def circularity(embedding: jax.Array, n_components: int = CIRCULARITY_COMPONENTS) -> jax.Array:
    """Circularity of the token embeddings (SPEC §5.3).

    Mean over the first ``n_components`` principal components of
    c_j = clip(max_k 2|Σ_t u_t e^{−2πikt/p}|² / (p Σ_t u_t²), 0, 1). Invariant to the sign of a
    component and to rotations within a pair of components of equal variance. A network is
    circular iff circularity ≥ :data:`phasespace.defaults.CIRCULAR_THRESHOLD`.

    Args:
        embedding: float32 (p, d): the token-embedding vectors of tokens 0…p−1 (W_E[:, :p]ᵀ).
            Zero-padded columns do not change the result.

    Returns:
        float32 scalar in [0, 1].

    Raises:
        ValueError: if ``embedding`` is not (p, d) (e.g. W_E itself, (d, V), not transposed) or
            ``n_components`` < 1.
    """
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components={n_components!r}: must be an integer ≥ 1")
    power = fourier_power(pca(embedding).scores[:, :n_components])
    return jnp.mean(jnp.clip(jnp.max(power, axis=1), 0.0, 1.0))


# --------------------------------------------------------------------------------------------- #
# Norms (SPEC §5.6)


def param_norm(params) -> jax.Array:
    """L2 norm of all parameters, sqrt(Σ θ²) over every leaf (float32 scalar, SPEC §5.6)."""
    leaves = jax.tree_util.tree_leaves(params)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
