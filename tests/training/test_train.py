import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from phasespace.models.transformer import TransformerArch
from phasespace.population.stack import NetworkSpec, build_population
from phasespace.training.loop import train_population
from phasespace.training.step import Recipe, cross_entropy, make_optimizer
from tests.helpers.numpy_reference import cross_entropy as ce64


@pytest.mark.parametrize("margin", [5.0, 10.0, 17.0, 20.0, 25.0, 30.0])
def test_loss_matches_float64_at_large_margins(margin):
    rng = np.random.default_rng(int(margin))
    V, B = 59, 64
    logits = rng.normal(size=(B, V)).astype(np.float32)
    labels = rng.integers(0, V, size=B).astype(np.int32)
    # correct class above every other logit by `margin`
    logits[np.arange(B), labels] = logits.max(1) + margin
    ref = ce64(logits, labels)  # float64 oracle: at margin 30 about 1e-12
    ours = np.asarray(cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), np.float64)
    assert ours.dtype == np.float64 and np.all(ref > 0)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=0)

    grad = np.asarray(jax.grad(lambda x: jnp.sum(cross_entropy(x, jnp.asarray(labels))))(jnp.asarray(logits)))
    x64 = logits.astype(np.float64)
    p64 = np.exp(x64 - x64.max(1, keepdims=True))
    p64 /= p64.sum(1, keepdims=True)
    g64 = p64.copy()
    g64[np.arange(B), labels] = 0.0
    # p_y − 1 = −Σ_{j≠y} p_j, written so that float64 keeps its relative precision at 1e-12
    g64[np.arange(B), labels] = -g64.sum(1)
    # each entry (including the tiny negative one of the correct class) to 1e-5 relative
    np.testing.assert_allclose(grad, g64, rtol=1e-5, atol=1e-30)
    assert np.all(grad[np.arange(B), labels] < 0)  # correct class keeps its gradient
    row_sums = grad.sum(1)
    assert np.all(np.abs(row_sums) <= 1e-6 * np.abs(grad).max(1))


def test_loss_ordinary_logits_and_wrong_class():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(32, 11)) * 4).astype(np.float32)
    labels = rng.integers(0, 11, size=32).astype(np.int32)
    np.testing.assert_allclose(cross_entropy(logits, labels), ce64(logits, labels), rtol=1e-5)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(cross_entropy(logits, labels), ref, rtol=1e-5, atol=1e-6)


def _run_optimizer(tx, theta, grads):
    state = tx.init(theta)
    out = [float(theta)]
    for g in grads:
        upd, state = tx.update(jnp.float32(g), state, theta)
        theta = optax.apply_updates(theta, upd)
        out.append(float(theta))
    return out


def test_adamw_weight_decay_hand_values():
    """Zero gradient, lr 1e-3, wd 2 at the full rate: θ = 1 → 0.998 → 0.996004 (SPEC §4)."""
    tx = make_optimizer(1e-3, 2.0, warmup_steps=0)
    out = _run_optimizer(tx, jnp.float32(1.0), [0.0, 0.0])
    np.testing.assert_allclose(out, [1.0, 0.998, 0.996004], rtol=1e-7)


def test_warmup_first_step_is_noop():
    """Step t uses lr·min(t/10, 1): t = 0 leaves θ unchanged; t = 1 decays by lr/10·wd."""
    tx = make_optimizer(1e-3, 2.0, warmup_steps=10)
    out = _run_optimizer(tx, jnp.float32(1.0), [0.0] * 12)
    assert out[1] == 1.0
    expect = [1.0, 1.0]
    for t in range(1, 12):
        expect.append(expect[-1] * (1 - 1e-3 * min(t / 10, 1) * 2.0))
    np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_adamw_matches_pytorch_formula_in_float64():
    """AdamW(β=(0.9, 0.98), eps 1e-8, wd 2) with warm-up against PyTorch's update rule in float64."""
    rng = np.random.default_rng(1)
    grads = rng.normal(size=15)
    out = _run_optimizer(make_optimizer(1e-3, 2.0), jnp.float32(0.7), grads)
    theta, m, v = 0.7, 0.0, 0.0
    ref = [theta]
    for t, g in enumerate(grads):
        lr = 1e-3 * min(t / 10, 1)
        theta *= 1 - lr * 2.0
        m = 0.9 * m + 0.1 * g
        v = 0.98 * v + 0.02 * g * g
        mhat, vhat = m / (1 - 0.9 ** (t + 1)), v / (1 - 0.98 ** (t + 1))
        theta -= lr * mhat / (np.sqrt(vhat) + 1e-8)
        ref.append(theta)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_population_member_equals_network_trained_alone():
    """Network k of a vmapped population == the same network (seed, α) trained alone, ≥ 20 steps."""
    arch = TransformerArch(p=11, d_model=16)
    nets = [
        NetworkSpec(seed=s, attention_rate=a, d_model=16)
        for s, a in [(0, 0.0), (1, 0.5), (2, 1.0), (3, 0.25)]
    ]
    recipe = Recipe(steps=30)
    pop = build_population(arch, nets)
    state, hist = train_population(pop, recipe, chunk_steps=10)
    k = 2
    alone = build_population(arch, [nets[k]])
    s1, h1 = train_population(alone, recipe, chunk_steps=30)
    for x, y in zip(
        jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(s1.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(x[k]), np.asarray(y[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hist["train_loss"][k], h1["train_loss"][0], rtol=1e-5)
    assert hist["train_loss"].shape == (4, 30)
    # training makes progress and the first update is a no-op (warm-up)
    assert hist["train_loss"][k, -1] < hist["train_loss"][k, 0]
    assert hist["train_loss"][k, 1] == pytest.approx(hist["train_loss"][k, 0], rel=1e-6)


def test_training_reaches_full_accuracy_small_task():
    """A tiny population learns modular addition (p = 7 all-pairs train accuracy 1.0)."""
    arch = TransformerArch(p=7, d_model=32)
    pop = build_population(arch, [NetworkSpec(seed=s, attention_rate=1.0, d_model=32) for s in range(2)])
    state, hist = train_population(pop, Recipe(steps=300), chunk_steps=150)
    assert np.all(hist["train_accuracy"][:, -1] == 1.0)
    assert np.all(np.asarray(state.first_full_train) > 0)
    assert np.all(np.asarray(state.step) == 300)
