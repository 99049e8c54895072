"""Input layouts of the circuit metrics (issue 10): every public metric refuses a transposed,
wrongly sized or batched input with a ValueError naming the expected layout, for NumPy and JAX
inputs and under jit/vmap (the checks read static shapes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasespace.analysis import circles, metrics
from phasespace.tasks import Task, all_pairs


def _logits(p, v=None):
    v = v or p
    return np.random.default_rng(p).normal(size=(p * p, v)).astype(np.float32)


LOGIT_FUNCTIONS = [
    metrics.distance_irrelevance,
    metrics.distance_irrelevance_largest_wrong,
    metrics.correct_logits,
    metrics.largest_wrong_logits,
]


@pytest.mark.parametrize("fn", LOGIT_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_logit_metrics_refuse_a_wrong_layout(fn, xp):
    p = 7
    good = xp.asarray(_logits(p))
    fn(good, p)  # the right layout is accepted
    bad = {
        "transposed": good.T,  # (V, p²)
        "other p": xp.asarray(_logits(5)),  # a table for p = 5
        "grid": good.reshape(p, p, p),  # (p, p, V)
        "too few classes": good[:, : p - 1],
        "batched": xp.stack([good, good]),  # (R, p², V): vmap over the run axis instead
    }
    for what, x in bad.items():
        with pytest.raises(ValueError, match=r"expected \(p², V\) = \(49, V ≥ 7\)") as e:
            fn(x, p)
        assert str(tuple(x.shape)) in str(e.value), what


@pytest.mark.parametrize("fn", LOGIT_FUNCTIONS, ids=lambda f: f.__name__)
def test_logit_layout_is_checked_under_jit_and_vmap(fn):
    p = 5
    stack = jnp.asarray(np.stack([_logits(p), _logits(p) + 1]))
    got = jax.jit(jax.vmap(lambda x: fn(x, p)))(stack)  # per network (p², V): accepted
    assert got.shape[0] == 2
    with pytest.raises(ValueError, match="expected"):
        jax.jit(jax.vmap(lambda x: fn(x.T, p)))(stack)
    with pytest.raises(ValueError, match="expected"):
        jax.jit(lambda x: fn(x, p))(stack)  # the run axis not mapped


def test_correct_logits_of_a_grid_no_longer_returns_a_wrong_shape():
    p = 7
    grid = jnp.asarray(_logits(p).reshape(p, p, p))
    with pytest.raises(ValueError, match=r"shape \(7, 7, 7\)"):
        metrics.correct_logits(grid, p)
    _, labels = all_pairs(Task(p))
    table = _logits(p)
    np.testing.assert_array_equal(metrics.correct_logits(table, p), table[np.arange(p * p), labels])


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_embedding_metrics_refuse_a_wrong_layout(xp):
    emb = xp.asarray(np.random.default_rng(1).normal(size=(7, 8)).astype(np.float32))
    metrics.circularity(emb)
    for x in (emb[0], emb[None], xp.zeros((1, 8), np.float32)):
        with pytest.raises(ValueError, match=r"expected \(p, d\)"):
            metrics.circularity(x)
        with pytest.raises(ValueError, match=r"expected \(p, d\)"):
            metrics.pca(x)
    with pytest.raises(ValueError, match="n_components=0"):
        metrics.circularity(emb, 0)
    with pytest.raises(ValueError, match=r"scores: shape \(7,\)"):
        metrics.fourier_power(emb[:, 0])
    decomp = metrics.pca(emb)
    circles.key_frequencies(decomp, 7, 4)
    with pytest.raises(ValueError, match=r"expected \(p, r\) = \(5, r\)"):
        circles.key_frequencies(decomp, 5, 4)  # the table of another p
    with pytest.raises(ValueError, match="n_components = 9"):
        circles.key_frequencies(decomp, 7, 9)
    circles.isolate(decomp, xp.ones(4, bool))
    for keep in (xp.ones((2, 2), bool), xp.ones(8, bool)):
        with pytest.raises(ValueError, match=r"keep: shape"):
            circles.isolate(decomp, keep)


def test_gradient_symmetricity_and_the_sum_difference_table_refuse_a_wrong_layout():
    def logit_of(e):
        return jnp.tile(jnp.sum(e, axis=0), 2)[:7]

    emb = jnp.ones((3, 2, 4), jnp.float32)
    s, _ = metrics.gradient_symmetricity(logit_of, emb, jnp.zeros(3, jnp.int32))
    assert np.isfinite(float(s))
    for e, c in (
        (emb[0], jnp.zeros(3, jnp.int32)),
        (emb, jnp.zeros(4, jnp.int32)),
        (emb[:, :1], jnp.zeros(3)),
    ):
        with pytest.raises(ValueError, match=r"expected embeddings \(S, n_ctx, d\)"):
            metrics.gradient_symmetricity(logit_of, e, c)
    values = jnp.arange(25, dtype=jnp.float32)
    assert metrics.sum_diff_table(values, 5).shape == (5, 5)
    for v in (values[:24], values.reshape(5, 5), jnp.arange(49, dtype=jnp.float32)):
        with pytest.raises(ValueError, match=r"expected \(p²,\) = \(25,\)"):
            metrics.sum_diff_table(v, 5)


def test_circle_fits_refuse_a_wrong_layout():
    p = 5
    o = jnp.asarray(circles.clock_logits(p, 1))
    assert float(circles.logit_fve(o, o)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected tensors of one shape"):
        circles.logit_fve(o, o.reshape(p * p, p))
    logits, (_, labels) = _logits(p), all_pairs(Task(p))
    assert circles.accuracy_by_difference(logits, labels, p).shape == (p,)
    with pytest.raises(ValueError, match=r"expected \(p², V\)"):
        circles.accuracy_by_difference(logits.T, labels, p)
    with pytest.raises(ValueError, match=r"labels: shape \(24,\)"):
        circles.accuracy_by_difference(logits, labels[:24], p)
