"""Embedding circles, circle isolation and logit fits (SPEC §5.4, §5.5). Pure per-network
functions of fixed shapes (vmappable over the run axis); the composition per network lives in
:mod:`phasespace.analysis.circuits`.

Notation: an embedding *table* is (p, e), row t the embedding of operand value t. Its centred
PCA (:func:`phasespace.analysis.metrics.pca`) gives score vectors u_j (p,) and directions v_j
(e,); the *key frequency* of component j is the k ∈ {1…p−1} maximising the normalised Fourier
power 2|Σ_t u_t e^{−2πikt/p}|²/(p Σ_t u_t²) (:func:`phasespace.analysis.metrics.fourier_power`),
reported as min(k, p − k). Components sharing a key frequency form a *circle*; δ = k⁻¹ mod p
(reported as min(δ, p − δ)) is the step between neighbouring tokens on it (SPEC §5.4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from phasespace.analysis.metrics import PCA, check_logits, check_table, fourier_power, shape_of


def modular_inverses(p: int) -> np.ndarray:
    """int32 (p,): entry k is k⁻¹ mod p (0 for k = 0). Requires p prime."""
    inv = np.zeros(p, dtype=np.int32)
    for k in range(1, p):
        inv[k] = pow(k, -1, p)
    return inv


def key_frequencies(decomp: PCA, p: int, n_components: int) -> dict[str, jax.Array]:
    """Key frequency, δ, Fourier energy fraction and explained variance of the leading
    components (SPEC §5.4).

    Args:
        decomp: the table's :func:`phasespace.analysis.metrics.pca`.
        p: modulus (the table has p rows).
        n_components: number of leading components n (≤ r).

    Returns:
        dict of (n,) arrays: ``frequency`` int32 k as min(k, p − k) (0 for a zero component),
        ``delta`` int32 min(δ, p − δ) with δ = k⁻¹ mod p, ``power`` float32 the Fourier energy
        fraction at k (in [0, 1]; 0 for a zero component), ``variance`` float32 the fraction of
        the table's variance carried by the component. Invariant to the sign of a component and
        to rotations within a pair of equal variance.
    """
    rows, r = check_table(decomp.scores, "decomp.scores")
    if rows != p or not 1 <= n_components <= r:
        raise ValueError(
            f"decomp.scores: shape {(rows, r)}, expected (p, r) = ({p}, r) with 1 ≤ n_components = "
            f"{n_components} ≤ r (the pca of a (p, e) table for p={p})"
        )
    scores = decomp.scores[:, :n_components]
    s2 = decomp.singular_values**2
    nonzero = s2[:n_components] > 1e-12 * jnp.maximum(jnp.sum(s2), 1e-30)
    power = fourier_power(jnp.where(nonzero, scores, 1.0))
    best = jnp.argmax(power, axis=1) + 1
    k = jnp.minimum(best, p - best)
    inv = jnp.asarray(modular_inverses(p))[k]
    delta = jnp.minimum(inv, p - inv)
    return {
        "frequency": jnp.where(nonzero, k, 0).astype(jnp.int32),
        "delta": jnp.where(nonzero, delta, 0).astype(jnp.int32),
        "power": jnp.where(nonzero, jnp.max(power, axis=1), 0.0),
        "variance": s2[:n_components] / jnp.maximum(jnp.sum(s2), 1e-30),
    }


def group_circles(
    frequency: jax.Array, power: jax.Array, n_circles: int, min_power: float = 0.9, min_components: int = 2
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Group components into circles by shared key frequency (SPEC §5.4).

    A component counts if its Fourier energy fraction is ≥ ``min_power``; a circle is a key
    frequency shared by at least ``min_components`` counting components. Circles are ordered by
    their leading component (largest variance first).

    Args:
        frequency, power: (n,) from :func:`key_frequencies`.
        n_circles: static number C of circle slots returned (unused slots hold k = 0).

    Returns:
        ``(circle_frequency, members, count)``: int32 (C,) key frequency of each circle (0 for an
        empty slot); bool (C, n) the components of each circle; int32 scalar number of circles
        (≤ C; further circles are dropped).
    """
    n = frequency.shape[0]
    valid = (power >= min_power) & (frequency > 0)
    same = (frequency[:, None] == frequency[None, :]) & valid[:, None] & valid[None, :]
    size = jnp.sum(same, axis=1)
    earlier = jnp.tril(same, k=-1)  # [j, i]: i < j shares j's frequency
    start = valid & (size >= min_components) & ~jnp.any(earlier, axis=1)
    if n_circles > n:
        raise ValueError(f"n_circles={n_circles}: at most the number of components ({n})")
    order = jnp.argsort(~start, stable=True)[:n_circles]
    present = start[order]
    k = jnp.where(present, frequency[order], 0).astype(jnp.int32)
    members = (frequency[None, :] == k[:, None]) & valid[None, :] & present[:, None]
    return k, members, jnp.minimum(jnp.sum(start), n_circles).astype(jnp.int32)


def members_by_frequency(
    circle_frequency: jax.Array, frequency: jax.Array, power: jax.Array, min_power: float = 0.9
) -> jax.Array:
    """bool (C, n): the components of another table (e.g. the second operand's) whose key
    frequency is each circle's (and whose energy fraction is ≥ ``min_power``)."""
    valid = (power >= min_power) & (frequency > 0)
    return (
        (frequency[None, :] == circle_frequency[:, None]) & valid[None, :] & (circle_frequency[:, None] > 0)
    )


def delta_of(k: jax.Array, p: int) -> jax.Array:
    """min(δ, p − δ) with δ = k⁻¹ mod p, elementwise (0 for k = 0)."""
    inv = jnp.asarray(modular_inverses(p))[k]
    return jnp.minimum(inv, p - inv).astype(jnp.int32)


def accompanied_frequency(circle_frequency: jax.Array, p: int) -> jax.Array:
    """For each circle, the key frequency k′ of an earlier circle it accompanies: k ≡ ±2k′
    (mod p) (SPEC §5.5: a circle at 2k accompanying a main circle at k). int32 (C,), 0 if none
    (the first such earlier circle if several)."""
    k = circle_frequency
    twice = (2 * k) % p
    double = jnp.minimum(twice, p - twice)  # (C,) the frequency 2k′ of each candidate main k′
    c = k.shape[0]
    match = (double[None, :] == k[:, None]) & (k[None, :] > 0) & (k[:, None] > 0)
    match = match & (jnp.arange(c)[None, :] < jnp.arange(c)[:, None])
    first = jnp.argmax(match, axis=1)
    return jnp.where(jnp.any(match, axis=1), k[first], 0).astype(jnp.int32)


def isolate(decomp: PCA, keep: jax.Array) -> jax.Array:
    """Table (p, e) rebuilt from the kept leading components only: Σ_{j kept} u_j v_jᵀ + mean
    (inverse PCA with the mean added back, SPEC §5.5).

    Args:
        keep: bool (n,) over the n leading components (n ≤ r).
    """
    shape, (_, r) = shape_of(keep, "keep"), check_table(decomp.scores, "decomp.scores")
    if len(shape) != 1 or shape[0] > r:
        raise ValueError(f"keep: shape {shape}, expected (n,) with n ≤ r = {r} (one flag per component)")
    n = shape[0]
    scores = decomp.scores[:, :n] * keep.astype(decomp.scores.dtype)
    return scores @ decomp.directions[:n] + decomp.mean


# --------------------------------------------------------------------------------------------- #
# Logit fits (SPEC §5.5)


def _abc(p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.arange(p, dtype=np.float32)
    return t[:, None, None], t[None, :, None], t[None, None, :]


def clock_logits(p: int, k: jax.Array) -> jax.Array:
    """Q_clock[a, b, c] = cos(w(a + b − c)), w = 2πk/p: float32 (p, p, p). This and the Pizza and
    accompanying templates describe addition; their FVEs are NaN (flag ``not_addition``) for
    networks of other operations."""
    a, b, c = _abc(p)
    w = 2 * jnp.pi * jnp.asarray(k, jnp.float32) / p
    return jnp.cos(w * (a + b - c))


def pizza_logits(p: int, k: jax.Array) -> jax.Array:
    """Q_pizza[a, b, c] = |cos(w(a − b)/2)| · cos(w(a + b − c)): float32 (p, p, p)."""
    a, b, _ = _abc(p)
    w = 2 * jnp.pi * jnp.asarray(k, jnp.float32) / p
    return jnp.abs(jnp.cos(w * (a - b) / 2)) * clock_logits(p, k)


def accompanying_logits(p: int, k: jax.Array) -> jax.Array:
    """Q_acc[a, b, c] = −cos(w(a − b)) · cos(w(a + b − c)), w = 2πk/p of the *main* circle:
    float32 (p, p, p)."""
    a, b, _ = _abc(p)
    w = 2 * jnp.pi * jnp.asarray(k, jnp.float32) / p
    return -jnp.cos(w * (a - b)) * clock_logits(p, k)


def logit_fve(observed: jax.Array, fitted: jax.Array) -> jax.Array:
    """Fraction of variance explained (SPEC §5.5): 1 − Var(z(O) − z(F)) / Var(z(O)), z
    standardising over all entries (sklearn's ``explained_variance_score`` on standardised
    tensors, = 2ρ − 1 with ρ the Pearson correlation; not ρ²).

    Args:
        observed, fitted: float arrays of equal shape (e.g. (p, p, p) logits O[a, b, c]).

    Returns:
        float32 scalar ≤ 1 (NaN if either tensor is constant).
    """

    if shape_of(observed, "observed") != shape_of(fitted, "fitted"):
        raise ValueError(
            f"observed {shape_of(observed, 'observed')}, fitted {shape_of(fitted, 'fitted')}: "
            "expected tensors of one shape (e.g. (p, p, p) logits O[a, b, c])"
        )

    def z(x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        return (x - jnp.mean(x)) / jnp.std(x)

    zo = z(observed)
    return 1.0 - jnp.var(zo - z(fitted)) / jnp.var(zo)


def accuracy_by_difference(logits: jax.Array, labels: jax.Array, p: int) -> jax.Array:
    """Accuracy per difference (a − b) mod p over all p² pairs (pair order of
    :func:`phasespace.tasks.all_pairs`): float32 (p,), entry d over the p pairs with a − b ≡ d.

    Raises:
        ValueError: unless ``logits`` is (p², V ≥ p) and ``labels`` (p²,).
    """
    check_logits(logits, p)
    if shape_of(labels, "labels") != (p * p,):
        raise ValueError(f"labels: shape {shape_of(labels, 'labels')}, expected (p²,) = ({p * p},)")
    a, b = np.divmod(np.arange(p * p), p)
    d = (a - b) % p
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.zeros(p, jnp.float32).at[d].add(correct) / p
