import jax.numpy as jnp
import numpy as np
import pytest

from phasespace.analysis import metrics

P = 13


def _pair_logits(fn, p=P, V=None):
    """A (p², V) logit table whose correct-class logit is fn(a, b) and whose other logits are
    fn(a, b) − 5 − noise-free offsets (so the largest wrong logit also depends on fn alone)."""
    V = V or p
    a, b = np.divmod(np.arange(p * p), p)
    vals = fn(a, b)
    logits = np.tile((vals - 5.0)[:, None], (1, V)) - np.arange(V)[None, :] * 0.0
    logits[np.arange(p * p), (a + b) % p] = vals
    return jnp.asarray(logits, jnp.float32)


def test_reference_triples_spec():
    t = metrics.reference_triples(59)
    assert t.shape == (100, 3) and t.dtype == np.int32
    np.testing.assert_array_equal(t[:3], [[29, 1, 57], [49, 36, 24], [40, 38, 8]])


def test_distance_irrelevance_analytic():
    w = 2 * np.pi * 3 / P
    # depends only on a − b → every column of L constant → 0
    only_diff = _pair_logits(lambda a, b: np.cos(w * (a - b)) + 0.3 * np.sin(2 * w * (a - b)))
    assert float(metrics.distance_irrelevance(only_diff, P)) == pytest.approx(0.0, abs=1e-6)
    # depends only on a + b → std down each column equals the total std → 1
    only_sum = _pair_logits(lambda a, b: np.cos(w * (a + b)) + 0.5 * np.sin(w * (a + b)))
    assert float(metrics.distance_irrelevance(only_sum, P)) == pytest.approx(1.0, abs=1e-5)
    # largest-wrong variant: same analytic limits
    assert float(metrics.distance_irrelevance_largest_wrong(only_diff, P)) == pytest.approx(0.0, abs=1e-6)
    assert float(metrics.distance_irrelevance_largest_wrong(only_sum, P)) == pytest.approx(1.0, abs=1e-5)


def test_distance_irrelevance_matches_numpy_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(P * P, P)).astype(np.float32)
    a, b = np.divmod(np.arange(P * P), P)
    L = np.zeros((P, P))
    L[(a + b) % P, (a - b) % P] = logits[np.arange(P * P), (a + b) % P]
    expect = np.std(L, axis=0).mean() / np.std(L)
    assert float(metrics.distance_irrelevance(jnp.asarray(logits), P)) == pytest.approx(expect, rel=1e-5)
    wrong = logits.copy()
    wrong[np.arange(P * P), (a + b) % P] = -np.inf
    L[(a + b) % P, (a - b) % P] = wrong.max(1)
    expect = np.std(L, axis=0).mean() / np.std(L)
    got = float(metrics.distance_irrelevance_largest_wrong(jnp.asarray(logits), P))
    assert got == pytest.approx(expect, rel=1e-5)


def _circle_embedding(p, ks, d=16, seed=0):
    """Exact circles at frequencies ks, embedded by a random orthogonal map into R^d."""
    t = np.arange(p)
    cols = []
    for i, k in enumerate(ks):
        r = 1.0 + i  # distinct radii → distinct principal components
        cols += [r * np.cos(2 * np.pi * k * t / p), r * np.sin(2 * np.pi * k * t / p)]
    X = np.stack(cols, 1)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return (X @ Q[: X.shape[1]]).astype(np.float32)


def test_circularity_exact_circle_is_one():
    E = _circle_embedding(P, [2, 5])
    assert float(metrics.circularity(jnp.asarray(E))) == pytest.approx(1.0, abs=1e-5)


def test_circularity_invariances():
    E = _circle_embedding(P, [2, 5])
    # add a non-circular, lower-variance component so the value is below 1
    rng = np.random.default_rng(3)
    E = E + 0.6 * np.outer(rng.normal(size=P), rng.normal(size=E.shape[1])).astype(np.float32)
    base = float(metrics.circularity(jnp.asarray(E)))
    assert 0.3 < base < 0.999
    # sign flip of the whole embedding and of single coordinates
    assert float(metrics.circularity(jnp.asarray(-E))) == pytest.approx(base, abs=1e-5)
    flip = E * np.where(np.arange(E.shape[1]) % 2 == 0, -1, 1)
    assert float(metrics.circularity(jnp.asarray(flip))) == pytest.approx(base, abs=1e-5)
    # rotation within the plane of an exact circle (PC pair of equal variance)
    t = np.arange(P)
    circ = np.stack([np.cos(2 * np.pi * 4 * t / P), np.sin(2 * np.pi * 4 * t / P)], 1)
    th = 0.7
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    pad = np.zeros((P, 6))
    a = np.concatenate([circ, pad], 1).astype(np.float32)
    b = np.concatenate([circ @ R, pad], 1).astype(np.float32)
    ca, cb = float(metrics.circularity(jnp.asarray(a), 2)), float(metrics.circularity(jnp.asarray(b), 2))
    assert ca == pytest.approx(1.0, abs=1e-5) and cb == pytest.approx(ca, abs=1e-5)


def test_circularity_random_embedding_is_low():
    E = np.random.default_rng(0).normal(size=(59, 32)).astype(np.float32)
    assert float(metrics.circularity(jnp.asarray(E))) < 0.5


def test_fourier_power_matches_numpy_fft():
    u = np.random.default_rng(1).normal(size=(P, 3)).astype(np.float32)
    got = np.asarray(metrics.fourier_power(jnp.asarray(u)))
    f = np.fft.fft(u.astype(np.float64), axis=0)
    expect = (2 * np.abs(f[1:]) ** 2 / (P * (u.astype(np.float64) ** 2).sum(0))).T
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-6)


def test_gradient_symmetricity_analytic():
    """Q depends on E_a + E_b only → both gradients equal → s_g = 1; Q = f(E_a) − f(E_b) → −1."""
    W = jnp.asarray(np.random.default_rng(0).normal(size=(5, 8)), jnp.float32)
    emb = jnp.asarray(np.random.default_rng(1).normal(size=(20, 2, 8)), jnp.float32)
    cls = jnp.asarray(np.arange(20) % 5, jnp.int32)
    sym = lambda e: W @ jnp.tanh(e[0] + e[1])
    anti = lambda e: W @ (e[0] ** 3) - W @ (e[1] ** 3)
    s, zero = metrics.gradient_symmetricity(sym, emb, cls)
    assert float(s) == pytest.approx(1.0, abs=1e-6) and int(zero) == 0
    s = metrics.gradient_symmetricity(anti, emb, cls)[0]
    # cos between 3e0² ⊙ w and −3e1² ⊙ w: compare with a direct NumPy evaluation
    Wn, en = np.asarray(W, np.float64), np.asarray(emb, np.float64)
    cs = []
    for i in range(20):
        g0, g1 = 3 * en[i, 0] ** 2 * Wn[i % 5], -3 * en[i, 1] ** 2 * Wn[i % 5]
        cs.append(g0 @ g1 / np.linalg.norm(g0) / np.linalg.norm(g1))
    assert float(s) == pytest.approx(np.mean(cs), abs=1e-5)


def test_gradient_symmetricity_zero_gradient_is_nan_and_flagged():
    emb = jnp.ones((4, 2, 3), jnp.float32)
    cls = jnp.zeros((4,), jnp.int32)
    s, zero = metrics.gradient_symmetricity(lambda e: jnp.zeros(2) * e.sum(), emb, cls)
    assert np.isnan(float(s)) and int(zero) == 4


def test_param_norm():
    tree = {"a": jnp.ones((3,)), "b": {"c": jnp.full((2, 2), 2.0)}}
    assert float(metrics.param_norm(tree)) == pytest.approx(np.sqrt(3 + 16))
