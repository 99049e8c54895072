"""Fault isolation (issue 5): diverging networks are frozen and flagged without touching the others,
degenerate networks give NaN metrics with a flag, aggregates skip NaN, and a network's result does
not depend on the other networks in its bucket."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasespace.analysis.faults import FLAGS, describe_flags
from phasespace.analysis.network import analyze_population
from phasespace.models.transformer import TransformerArch
from phasespace.phase import diagram
from phasespace.population.stack import NetworkSpec, attn_scale, build_population, unpad_params
from phasespace.spec.networks import Recipe
from phasespace.training.loop import train_population
from phasespace.training.step import run_record

ARCH = TransformerArch(p=7, d_model=8, n_layers=1, n_heads=2, act="relu", diff_vocab=False, eqn_sign=False)
BASE_LRS = [1e-3, 2e-3, 1e-3, 3e-3, 1e-3, 2e-3, 1e-3]
RECIPE, CHUNK = Recipe(steps=30), 10
"""The tests share one population size (7), width, recipe and chunk length, hence one set of
compiled programs (compiling dominates these tests' time)."""


def _leaves(tree, i=None):
    return [np.asarray(x if i is None else x[i]) for x in jax.tree_util.tree_leaves(tree)]


def _flag(name: str) -> int:
    return 1 << FLAGS.index(name)


def _nets(lrs):
    return [
        NetworkSpec(seed=s, attention_rate=[0.0, 0.5, 1.0][s % 3], d_model=8, lr=lr)
        for s, lr in enumerate(lrs)
    ]


@pytest.fixture(scope="module")
def absurd_lr_runs():
    """The same 7 networks trained 30 steps, with and without lr = 1e30 for network 2 alone."""
    base = BASE_LRS
    absurd = list(base)
    absurd[2] = 1e30
    out = {}
    for name, lrs in (("base", base), ("absurd", absurd)):
        pop = build_population(ARCH, _nets(lrs))
        frozen_params = []

        def keep(state, h, frozen_params=frozen_params):
            frozen_params.append(_leaves(state.params, 2))

        state, hist = train_population(pop, RECIPE, chunk_steps=CHUNK, on_chunk=keep)
        m = analyze_population(
            ARCH,
            state.params,
            pop.hparams["attention_rate"],
            pop.hparams["attn_scale"],
            pop.hparams["train_mask"],
            n_triples=20,
        )
        out[name] = (state, hist, m, frozen_params)
    return out


def test_absurd_lr_network_is_frozen_and_flagged(absurd_lr_runs):
    state, _, m, per_chunk = absurd_lr_runs["absurd"]
    nf = np.asarray(state.nonfinite_step)
    # step 0 has rate 0 (warm-up), step 1 moves the weights to ~1e29, step 2's loss overflows
    assert nf[2] == 2
    assert np.all(np.delete(nf, 2) == -1)
    # frozen at its last finite parameters and AdamW state: finite, and unchanged after step 2
    assert all(np.all(np.isfinite(x)) for x in _leaves(state.params, 2))
    assert all(np.all(np.isfinite(x)) for x in _leaves(state.opt_state, 2))
    for later in per_chunk[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(per_chunk[0], later, strict=True))
    assert int(np.asarray(state.opt_state[0].count)[2]) == 2  # Adam's step count stopped too
    # its metrics are NaN with a flag, never a crash or a silent number
    assert m["degenerate"][2] & _flag("nonfinite_logits")
    for k in ("accuracy", "loss", "distance_irrelevance", "gradient_symmetricity"):
        assert np.isnan(m[k][2]), k
    assert "nonfinite_logits" in describe_flags(int(m["degenerate"][2]))


def test_run_record_counts_only_steps_before_a_network_froze(absurd_lr_runs):
    state, hist, m, _ = absurd_lr_runs["absurd"]
    assert not np.isfinite(hist["train_loss"][2, 2])  # the step that froze it
    for i in range(7):
        upto = 2 if i == 2 else RECIPE.steps  # network 2: steps 0 and 1 only
        for split in ("train", "test"):
            acc, loss = hist[f"{split}_accuracy"][i, :upto], hist[f"{split}_loss"][i, :upto]
            assert np.asarray(getattr(state, f"best_{split}_accuracy"))[i] == acc.max(), (i, split)
            assert np.asarray(getattr(state, f"best_{split}_loss"))[i] == loss.min(), (i, split)
    rec = run_record(state, m)
    assert rec["nonfinite_step"][2] == 2.0 and np.isnan(np.delete(rec["nonfinite_step"], 2)).all()
    assert np.isnan(m["train_accuracy"][2])  # the final metrics are NaN; the record is kept
    assert rec["best_train_accuracy"][2] == hist["train_accuracy"][2, :2].max()
    assert not rec["collapsed"][2]


def test_absurd_lr_leaves_other_networks_bit_identical(absurd_lr_runs):
    s0, h0, m0, _ = absurd_lr_runs["base"]
    s1, h1, m1, _ = absurd_lr_runs["absurd"]
    for i in (0, 1, 3, 4, 5, 6):
        for a, b in zip(_leaves(s0.params, i), _leaves(s1.params, i), strict=True):
            assert np.array_equal(a, b)
        for a, b in zip(_leaves(s0.opt_state, i), _leaves(s1.opt_state, i), strict=True):
            assert np.array_equal(a, b)
        for k in h0:
            assert np.array_equal(h0[k][i], h1[k][i]), k
        for k in m0:
            assert np.array_equal(m0[k][i], m1[k][i], equal_nan=True), k
        assert m1["degenerate"][i] == 0


def test_overflowing_adam_moments_freeze_the_network():
    """W_U scaled by 1e20: loss and parameters stay finite but the gradients' squares overflow the
    second moment to inf, which would silently stop that network's updates forever."""
    pop = build_population(ARCH, _nets(BASE_LRS))
    pop.params["params"]["W_U"] = pop.params["params"]["W_U"].at[0].multiply(1e20)
    state, _ = train_population(pop, RECIPE, chunk_steps=CHUNK)
    # Adam's moments are updated at step 0 even though its warm-up rate is 0
    assert np.asarray(state.nonfinite_step).tolist() == [0, -1, -1, -1, -1, -1, -1]
    for x in _leaves(state.opt_state):
        assert np.all(np.isfinite(x))


def test_degenerate_networks_give_nan_and_flags_not_crashes():
    pop = build_population(ARCH, _nets(BASE_LRS))

    def set_net(tree, i, f):
        return jax.tree_util.tree_map(lambda x: x.at[i].set(f(x[i])), tree)

    params = set_net(pop.params, 0, jnp.zeros_like)  # all-zero weights: zero gradients
    params = set_net(params, 1, lambda x: jnp.full_like(x, jnp.nan))
    params = set_net(params, 2, lambda x: x * 1e30)  # finite weights, overflowing logits
    m = analyze_population(
        ARCH, params, pop.hparams["attention_rate"], pop.hparams["attn_scale"], pop.hparams["train_mask"], 20
    )
    healthy = analyze_population(
        ARCH,
        pop.params,
        pop.hparams["attention_rate"],
        pop.hparams["attn_scale"],
        pop.hparams["train_mask"],
        20,
    )
    zero = int(m["degenerate"][0])
    assert zero == _flag("constant_logits") | _flag("zero_gradients") | _flag("embedding_rank_deficient")
    assert m["gradient_symmetricity_zero_grads"][0] == 20
    for k in ("gradient_symmetricity", "distance_irrelevance", "circularity"):
        assert np.isnan(m[k][0]), k
    # defined quantities of the zero network keep their analytic values: uniform logits
    np.testing.assert_allclose(m["loss"][0], np.log(7), rtol=1e-6)
    assert m["param_norm"][0] == 0.0
    # NaN weights: every float metric NaN (accuracy too: argmax over NaN would count hits)
    assert m["degenerate"][1] & _flag("nonfinite_params")
    for k, v in m.items():
        if v.dtype.kind == "f":
            assert np.isnan(v[1]), k
    assert m["degenerate"][2] & _flag("nonfinite_logits")
    assert np.isnan(m["accuracy"][2]) and np.isnan(m["test_accuracy"][2])
    # healthy networks are unflagged and unaffected by their degenerate neighbours
    for i in range(3, 7):
        assert m["degenerate"][i] == 0
        for k in m:
            assert np.array_equal(m[k][i], healthy[k][i]), k
    assert describe_flags(0) == ""
    assert describe_flags(zero) == "constant_logits|zero_gradients|embedding_rank_deficient"


def test_aggregates_skip_nan_and_count_them():
    runs = {
        "attention_rate": np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
        "seed": np.array([0, 1, 2, 0, 1, 2]),
        "gradient_symmetricity": np.array([0.5, np.nan, 0.7, 0.9, 0.8, np.nan]),
    }
    out = diagram.grid_arrays(runs, ["attention_rate", "seed"], metrics=["gradient_symmetricity"])
    np.testing.assert_allclose(out["gradient_symmetricity__mean"], [0.6, 0.85])
    np.testing.assert_allclose(out["gradient_symmetricity__std"], [0.1, 0.05])
    assert out["gradient_symmetricity__count"].tolist() == [2, 2]
    assert out["gradient_symmetricity__nan"].tolist() == [1, 1]
    assert np.isnan(out["gradient_symmetricity"][0, 1])


# --------------------------------------------------------------------------------------------- #
# Batch independence


def test_network_result_does_not_depend_on_its_population():
    """One network (seed 3, α 0.5, d_model 8, lr 3e-3, wd 1, f 0.6) trained alone, among 7 and
    among 64 (widths 8 and 16, so it is zero-padded to a bucket of width 16): the same initial
    weights and split bit for bit, the same final metrics to 1e-5."""
    x = NetworkSpec(seed=3, attention_rate=0.5, d_model=8, lr=3e-3, weight_decay=1.0, train_fraction=0.6)
    rng = np.random.default_rng(0)

    def others(n, widths):
        return [
            NetworkSpec(
                seed=100 + int(rng.integers(10_000)),
                attention_rate=float(rng.uniform()),
                d_model=int(rng.choice(widths)),
                lr=float(rng.choice([1e-3, 3e-3])),
            )
            for _ in range(n)
        ]

    cases = [([x], 0, 8), ([*others(3, [8]), x, *others(3, [8])], 3, 8)]
    cases.append(([*others(40, [8, 16]), x, *others(23, [8, 16])], 40, 16))
    true = ARCH.with_width(8)
    inits, masks, finals, curves = [], [], [], []
    for nets, i, width in cases:
        arch = ARCH.with_width(width)
        pop = build_population(arch, nets)
        assert pop.size in (1, 7, 64)
        one = lambda tree, i=i: jax.tree_util.tree_map(lambda a: np.asarray(a[i]), tree)
        inits.append(unpad_params(one(pop.params), arch, true))
        masks.append(np.asarray(pop.hparams["train_mask"][i]))
        state, hist = train_population(pop, RECIPE, chunk_steps=CHUNK)
        finals.append(unpad_params(one(state.params), arch, true))
        curves.append(hist["train_loss"][i])
    for k in (1, 2):
        assert all(np.array_equal(a, b) for a, b in zip(_leaves(inits[0]), _leaves(inits[k]), strict=True))
        assert np.array_equal(masks[0], masks[k])
        np.testing.assert_allclose(curves[k], curves[0], rtol=1e-5, atol=1e-5)
    # the three trained copies analysed side by side, padded with copies of the first to the
    # shared population size 7 (so the compiled analysis of the other tests is reused)
    finals += [finals[0]] * 4
    stacked = jax.tree_util.tree_map(lambda *a: np.stack(a), *finals)
    m = analyze_population(true, stacked, [0.5] * 7, [attn_scale(8, 2)] * 7, np.stack([masks[0]] * 7), 20)
    assert np.all(m["degenerate"] == 0)
    for k, v in m.items():
        np.testing.assert_allclose(v[1:3], v[[0, 0]], rtol=1e-5, atol=1e-5, err_msg=k)
