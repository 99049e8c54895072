import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from phasespace.models.transformer import TransformerArch
from phasespace.population.stack import NetworkSpec, build_population
from phasespace.training.loop import train_population
from phasespace.training.step import (
    Recipe,
    TrainState,
    cross_entropy,
    make_optimizer,
    run_record,
    split_statistics,
)
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
    # the run record tracked inside the program (across the chunk boundary at step 150) equals
    # the one read off the per-step history
    for i in range(2):
        for split in ("train", "test"):
            acc, loss = hist[f"{split}_accuracy"][i], hist[f"{split}_loss"][i]
            assert np.asarray(getattr(state, f"best_{split}_accuracy"))[i] == acc.max(), split
            assert np.asarray(getattr(state, f"best_{split}_loss"))[i] == loss.min(), split
            solved, full = np.flatnonzero(acc >= np.float32(0.99)), np.flatnonzero(acc == 1.0)
            assert np.asarray(getattr(state, f"first_solved_{split}"))[i] == (
                solved[0] if solved.size else -1
            )
            assert np.asarray(getattr(state, f"first_full_{split}"))[i] == (full[0] if full.size else -1)
    assert np.asarray(state.first_solved_train).tolist() != [-1, -1]


def _record_state(**fields):
    """A TrainState of 1 network with the run-record fields given (others: never / NaN)."""
    base = dict(
        step=40,
        first_full_train=-1,
        first_full_test=-1,
        first_solved_train=-1,
        first_solved_test=-1,
        best_train_accuracy=np.nan,
        best_test_accuracy=np.nan,
        best_train_loss=np.nan,
        best_test_loss=np.nan,
        nonfinite_step=-1,
        stop_count=0,
        stopped_step=-1,
    )
    base.update(fields)
    ints = ("step", "first_full_train", "first_full_test", "first_solved_train", "first_solved_test")
    ints += ("stop_count", "stopped_step")
    arrays = {
        k: np.asarray([v], np.int32 if k in ints or k == "nonfinite_step" else np.float32)
        for k, v in base.items()
    }
    return TrainState(params=None, opt_state=None, **arrays)


def _final(train_acc, test_acc, train_loss=0.5, test_loss=1.0):
    return {
        "train_accuracy": np.float32([train_acc]),
        "test_accuracy": np.float32([test_acc]),
        "train_loss": np.float32([train_loss]),
        "test_loss": np.float32([test_loss]),
    }


def test_run_record_collapse_rule_and_missing_steps():
    """collapsed: the final train or test accuracy is more than 0.1 below its best after reaching
    ≥ 0.99; steps that never happened are NaN; the final parameters count as step ``steps``."""
    reached = dict(
        first_solved_train=22, first_full_train=25, best_train_accuracy=1.0, best_test_accuracy=0.4
    )
    rec = run_record(_record_state(**reached), _final(0.735, 0.25))
    assert rec["collapsed"].tolist() == [True]
    assert rec["best_train_accuracy"][0] == 1.0 and rec["best_test_accuracy"][0] == np.float32(0.4)
    assert rec["first_solved_train_step"][0] == 22.0 and rec["first_full_train_step"][0] == 25.0
    assert np.isnan(rec["first_solved_test_step"][0]) and np.isnan(rec["first_full_test_step"][0])
    assert np.isnan(rec["generalization_delay1"][0]) and np.isnan(rec["generalization_delay2"][0])
    assert rec["generalization_gap"][0] == 1.0 - np.float64(np.float32(0.4))
    assert np.isnan(rec["nonfinite_step"][0]) and rec["steps"][0] == 40
    for k in ("first_solved_train_step", "first_full_test_step", "generalization_delay1", "nonfinite_step"):
        assert rec[k].dtype == np.float64, k
    assert rec["collapsed"].dtype == bool and rec["steps"].dtype == np.int64
    # a drop of at most 0.1 is no collapse; a split that never reached 0.99 cannot collapse
    assert run_record(_record_state(**reached), _final(0.95, 0.01))["collapsed"].tolist() == [False]
    never = dict(best_train_accuracy=0.9, best_test_accuracy=0.5)
    assert run_record(_record_state(**never), _final(0.1, 0.01))["collapsed"].tolist() == [False]
    # the test split alone collapsing counts too
    both = dict(first_solved_train=5, first_solved_test=30, best_train_accuracy=1.0, best_test_accuracy=0.995)
    rec = run_record(_record_state(**both), _final(1.0, 0.5))
    assert rec["collapsed"].tolist() == [True] and rec["generalization_delay1"][0] == 25.0
    # reached only by the final parameters: first step = steps, best = final
    rec = run_record(_record_state(best_train_accuracy=0.98, best_train_loss=0.2), _final(1.0, 0.2, 0.1))
    assert rec["first_full_train_step"][0] == 40.0 and rec["first_solved_train_step"][0] == 40.0
    assert rec["best_train_accuracy"][0] == 1.0 and rec["best_train_loss"][0] == np.float32(0.1)
    assert rec["collapsed"].tolist() == [False]
    # a frozen network with NaN final metrics keeps its record and its non-finite step
    rec = run_record(
        _record_state(nonfinite_step=2, best_train_accuracy=0.2, best_train_loss=3.0),
        _final(np.nan, np.nan, np.nan, np.nan),
    )
    assert rec["best_train_accuracy"][0] == np.float32(0.2) and rec["best_train_loss"][0] == 3.0
    assert rec["nonfinite_step"][0] == 2.0 and np.isnan(rec["best_test_loss"][0])
    assert np.isnan(rec["stopped_step"][0]) and rec["steps"][0] == 40
    # stopped early at step 17 (of the population's 40): 17 steps taken; the final parameters
    # (those of step 17) reaching accuracy 1 count as step 17
    rec = run_record(_record_state(stopped_step=17, best_train_accuracy=0.5), _final(1.0, 0.2))
    assert rec["stopped_step"][0] == 17.0 and rec["steps"][0] == 17
    assert rec["first_full_train_step"][0] == 17.0


def test_accuracy_over_all_pairs_is_the_correctly_rounded_count_ratio():
    """At p = 11 a perfect network's accuracy is exactly 1.0 under jit(vmap) (XLA would multiply
    by the float32 reciprocal of 121 and give 0.99999994), and every count k gives float32(k / 121)."""
    p, R = 11, 122
    labels = jnp.asarray(np.arange(p * p) % p, jnp.int32)
    k = np.arange(R) % (p * p + 1)  # network r gets its first k[r] pairs right
    right = np.arange(p * p)[None, :] < k[:, None]
    wrong = (np.asarray(labels) + 1) % p
    logits = jax.nn.one_hot(np.where(right, np.asarray(labels), wrong), p)
    mask = np.random.default_rng(0).random((R, p * p)) < 0.8
    stats = jax.jit(jax.vmap(split_statistics, in_axes=(0, None, 0)))(logits, labels, jnp.asarray(mask))
    acc = np.asarray(stats["accuracy"])
    assert acc[k == p * p].tolist() == [1.0]
    np.testing.assert_array_equal(acc, (k / (p * p)).astype(np.float32))
