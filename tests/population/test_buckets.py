"""Width buckets: the FLOP model, the planner, and zero-padded networks being the same networks."""

import dataclasses
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasespace.analysis.network import analyze_population
from phasespace.io.reference import load_reference_transformer
from phasespace.models.transformer import Transformer, TransformerArch
from phasespace.population.buckets import padding_report, plan_buckets, plan_widths
from phasespace.population.flops import step_flops
from phasespace.population.stack import NetworkSpec, attn_scale, build_population, pad_params, unpad_params
from phasespace.spec import expand, parse_spec
from phasespace.tasks import all_pairs, train_mask
from phasespace.training.loop import train_population
from phasespace.training.step import Recipe, evaluate, table

REFERENCE_DIR = os.environ.get(
    "PHASESPACE_REFERENCE",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "reference"),
)


# --------------------------------------------------------------------------------------------- #
# FLOP model against the products in the traced training step


def _dot_flops(jaxpr) -> int:
    """2·(output size)·(contracted size) summed over every dot_general, sub-jaxprs included."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in lc]))
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    total += _dot_flops(sub.jaxpr)
                elif hasattr(sub, "eqns"):
                    total += _dot_flops(sub)
    return total


def traced_step_flops(arch: TransformerArch) -> int:
    """Matmul FLOPs of one training step of one network, counted in its traced gradient."""
    params = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32), _shapes(arch), is_leaf=lambda s: isinstance(s, tuple)
    )
    hp = {
        "attention_rate": jnp.float32(0.5),
        "attn_scale": jnp.float32(attn_scale(arch.d_model)),
        "train_mask": jnp.asarray(train_mask(arch.p, 0.8, 0)),
    }
    tokens, labels = all_pairs(arch.task)
    # the plain model (step_flops counts it; the exact fast path of 1-layer buckets does less)
    grad = jax.grad(lambda p: evaluate(arch, p, hp, jnp.asarray(tokens), jnp.asarray(labels), fast=False)[0])
    return _dot_flops(jax.make_jaxpr(grad)(params).jaxpr)


@pytest.mark.parametrize(
    "arch",
    [
        TransformerArch(p=7, d_model=10),
        TransformerArch(p=7, d_model=13, n_layers=2),
        TransformerArch(p=5, d_model=8, n_layers=3, diff_vocab=True, eqn_sign=True),
    ],
    ids=str,
)
def test_step_flops_equals_traced_products(arch):
    assert step_flops(arch) == traced_step_flops(arch)


def test_planner_waste_matches_direct_flop_count():
    arch = TransformerArch(p=7, d_model=16)
    widths = [5, 6, 6, 8, 8, 8, 11, 13, 16, 16]
    plan = plan_widths(arch, widths, max_buckets=3, max_waste=0.0)
    assert len(plan.widths) == 3
    cost = {d: traced_step_flops(arch.with_width(d)) for d in set(widths) | set(plan.widths)}
    true = sum(cost[d] for d in widths)
    padded = sum(cost[plan.assignment[d]] for d in widths)
    assert plan.true_flops == true and plan.padded_flops == padded
    assert plan.waste == pytest.approx(1 - true / padded, abs=1e-15)
    assert 0 < plan.waste < 0.5
    # the dynamic program is optimal: brute force over every split of the 6 distinct widths
    u = sorted(set(widths))
    best = min(
        sum(
            step_flops(arch.with_width(max(w for w in u if lo <= w <= hi)))
            * sum(1 for d in widths if lo <= d <= hi)
            for lo, hi in zip([u[0], *[u[c + 1] for c in cut]], [*[u[c] for c in cut], u[-1]], strict=True)
        )
        for cut in itertools.combinations(range(len(u) - 1), 2)
    )
    assert plan.padded_flops == best


def test_planner_tradeoff_and_limits():
    arch = TransformerArch(p=11, d_model=64)
    widths = np.floor(2 ** np.random.default_rng(0).uniform(4, 6, size=200)).astype(int)
    loose = plan_widths(arch, widths, max_buckets=8, max_waste=0.5)
    tight = plan_widths(arch, widths, max_buckets=8, max_waste=0.12)
    capped = plan_widths(arch, widths, max_buckets=8, max_waste=0.01)
    assert len(loose.widths) < len(tight.widths) < len(capped.widths) == 8
    assert loose.waste <= 0.5 and tight.waste <= 0.12 and capped.waste > 0.01
    # the smallest number of buckets meeting the target
    assert tight.curve[len(tight.widths) - 2] > 0.12 and loose.curve[len(loose.widths) - 2] > 0.5
    assert all(np.diff(tight.curve) <= 1e-12)  # more buckets never waste more
    one = plan_widths(arch, widths, max_buckets=1)
    assert one.widths == (int(widths.max()),) and one.waste == pytest.approx(one.curve[0])
    exact = plan_widths(arch, [8, 8, 12], max_buckets=8, max_waste=0.0)
    assert exact.widths == (8, 12) and exact.waste == 0.0
    with pytest.raises(ValueError, match="max_waste"):
        plan_widths(arch, widths, max_waste=1.0)
    with pytest.raises(ValueError, match="n_heads"):
        plan_widths(arch, [3, 8])


def test_plan_buckets_keys_unique_stable_and_reported():
    raw = {
        "axes": {
            "p": 11,
            "d_model": {"dist": "log2uniform", "low": 3, "high": 6},
            "attention_rate": {"dist": "uniform", "low": 0.0, "high": 1.0},
            "seed": {"dist": "range", "low": 0, "high": 50},
            "n_layers": [1, 2],
        },
        "sampling": {"n": 1},
        "buckets": {"max_buckets": 4, "max_waste": 0.1},
    }
    spec = parse_spec(raw)
    nets = expand(spec)
    assert len(nets) == 100 and len({n.values["seed"] for n in nets}) == 50
    b1 = plan_buckets(nets, **spec.buckets)
    b2 = plan_buckets(expand(parse_spec(raw)), **spec.buckets)
    assert [b.key for b in b1] == [b.key for b in b2]
    assert len({b.key for b in b1}) == len(b1) and 2 <= len(b1) <= 8
    members = sorted(n.index for b in b1 for n in b.networks)
    assert members == list(range(100))
    for b in b1:
        assert all(n.values["d_model"] <= b.arch.d_model for n in b.networks)
        assert b.arch.d_model == max(n.values["d_model"] for n in b.networks)
        assert all(n.values["n_layers"] == b.arch.n_layers for n in b.networks)
    rep = padding_report(b1)
    t = sum(step_flops(b.arch.with_width(n.values["d_model"])) for b in b1 for n in b.networks)
    pf = sum(step_flops(b.arch) * len(b.networks) for b in b1)
    assert rep["waste"] == pytest.approx(1 - t / pf, abs=1e-12)
    assert sum(r["networks"] for r in rep["buckets"]) == 100


# --------------------------------------------------------------------------------------------- #
# A zero-padded network is the same network


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


@pytest.fixture(scope="module")
def padded_vs_true():
    """Widths 8 (d_head 2) and 10 (d_head 2, not divisible by 4) trained padded in one bucket of
    width 16 (d_head 4), and each trained alone at its true width; p = 11."""
    bucket = TransformerArch(p=11, d_model=16)
    nets = [
        NetworkSpec(seed=3, attention_rate=0.3, d_model=8),
        NetworkSpec(seed=4, attention_rate=0.9, d_model=10),
    ]
    recipe20 = Recipe(steps=20)
    padded = build_population(bucket, nets)
    s_pad20, h_pad = train_population(padded, recipe20, chunk_steps=20)
    alone = []
    for n in nets:
        pop = build_population(bucket.with_width(n.d_model), [n])
        s, h = train_population(pop, recipe20, chunk_steps=20)
        alone.append((pop, s, h))
    params20 = jax.tree_util.tree_map(np.asarray, s_pad20.params)
    s_pad200, _ = train_population(padded, Recipe(steps=200), chunk_steps=20, state=s_pad20)
    return bucket, nets, padded, params20, h_pad, alone, s_pad200


def test_padded_params_equal_true_width_after_20_steps(padded_vs_true):
    bucket, nets, _, params20, h_pad, alone, _ = padded_vs_true
    for k, (n, (pop, s, h)) in enumerate(zip(nets, alone, strict=True)):
        mine = jax.tree_util.tree_map(lambda x, k=k: x[k], params20)
        sliced = unpad_params(mine, bucket, bucket.with_width(n.d_model))
        ref = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), s.params)
        for (path, x), (_, y) in zip(_leaves(sliced), _leaves(ref), strict=True):
            assert x.shape == y.shape, path
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=str(path))
        np.testing.assert_allclose(h_pad["train_loss"][k], h["train_loss"][0], rtol=1e-5)
        # and the network did move
        init = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), pop.params)
        assert np.abs(ref["params"]["W_E"] - init["params"]["W_E"]).max() > 1e-3


def test_padded_entries_exactly_zero_after_200_steps(padded_vs_true):
    bucket, nets, _, _, _, _, s200 = padded_vs_true
    assert np.all(np.asarray(s200.step) == 200)
    for k, n in enumerate(nets):
        p = jax.tree_util.tree_map(lambda x, k=k: np.asarray(x[k]), s200.params)
        true = bucket.with_width(n.d_model)
        for path, x in _leaves(p):
            mask = _pad_mask(path, true, bucket)
            assert mask.shape == x.shape and mask.any(), path
            assert np.all(x[mask] == 0.0), path  # exactly zero, not merely small
            if "b_" not in str(path):  # biases start at zero; weights are non-zero at true width
                assert np.all(x[~mask] != 0.0), path
        for leaf in jax.tree_util.tree_leaves(s200.opt_state):
            assert np.all(np.isfinite(np.asarray(leaf)))


def _pad_mask(path, true, bucket):
    """True where an entry of a bucket-width parameter is padding for a network of width ``true``."""
    ones = jax.tree_util.tree_map(
        lambda s: np.ones(s, np.float32), _shapes(true), is_leaf=lambda s: isinstance(s, tuple)
    )
    padded = pad_params(ones, true, bucket)
    for p, x in _leaves(padded):
        if [getattr(e, "key", None) for e in p] == [getattr(e, "key", None) for e in path]:
            return np.asarray(x) == 0.0
    raise KeyError(path)


def _shapes(arch):
    model = Transformer(arch)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, arch.n_ctx), jnp.int32), 1.0, 1.0)
    )
    return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def test_padded_logits_and_metrics_equal_true_width(padded_vs_true):
    bucket, nets, padded, params20, _, alone, _ = padded_vs_true
    tokens, _ = table(bucket)
    m_pad = analyze_population(
        bucket,
        params20,
        padded.hparams["attention_rate"],
        padded.hparams["attn_scale"],
        padded.hparams["train_mask"],
    )
    for k, (n, (pop, s, _)) in enumerate(zip(nets, alone, strict=True)):
        true = bucket.with_width(n.d_model)
        mine = jax.tree_util.tree_map(lambda x, k=k: x[k], params20)
        ref = jax.tree_util.tree_map(lambda x: x[0], s.params)
        scale = attn_scale(n.d_model)
        l_pad = Transformer(bucket).apply(mine, tokens, n.attention_rate, scale)
        l_true = Transformer(true).apply(ref, tokens, n.attention_rate, scale)
        np.testing.assert_allclose(np.asarray(l_pad), np.asarray(l_true), rtol=1e-5, atol=1e-5)
        m_true = analyze_population(
            true,
            s.params,
            pop.hparams["attention_rate"],
            pop.hparams["attn_scale"],
            pop.hparams["train_mask"],
        )
        for key in (
            "gradient_symmetricity",
            "distance_irrelevance",
            "distance_irrelevance_largest_wrong",
            "circularity",
            "param_norm",
            "train_accuracy",
            "test_accuracy",
            "loss",
        ):
            np.testing.assert_allclose(m_pad[key][k], m_true[key][0], rtol=2e-5, atol=2e-5, err_msg=key)


def test_reference_checkpoint_width_86_padded(tmp_path):
    """The released d_model = 86 checkpoint (d_head = 21) gives the same logits padded to 128."""
    path = os.path.join(REFERENCE_DIR, "f5dh675z97.npz")
    if not os.path.exists(path):
        pytest.skip(f"reference data not found at {REFERENCE_DIR}")
    arch, params, cfg = load_reference_transformer(path)
    assert arch.d_model == 86 and arch.d_head == 21
    bucket = arch.with_width(128)
    tokens, _ = table(arch)
    alpha, scale = float(cfg["attn_coeff"]), attn_scale(86)
    ref = Transformer(arch).apply(params, tokens, alpha, scale)
    padded = pad_params(jax.tree_util.tree_map(jnp.asarray, params), arch, bucket)
    out = Transformer(bucket).apply(padded, tokens, alpha, scale)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- #
# Per-network learning rate and weight decay


def test_per_network_lr_and_wd_equal_separate_runs(padded_vs_true):
    """Learning rate and weight decay are per-network data: networks with different values in one
    compiled population equal separate runs (here also padded: widths 8 and 10 in a bucket of 16)."""
    bucket, nets_default, *_, alone_default, _ = padded_vs_true
    nets = [
        dataclasses.replace(nets_default[0], lr=3e-3, weight_decay=0.5),
        dataclasses.replace(nets_default[1], lr=1e-3, weight_decay=0.0),
    ]
    recipe = Recipe(steps=20)
    s_all, _ = train_population(build_population(bucket, nets), recipe, chunk_steps=20)
    for k, n in enumerate(nets):
        true = bucket.with_width(n.d_model)
        s, _ = train_population(build_population(true, [n]), recipe, chunk_steps=20)
        mine = unpad_params(
            jax.tree_util.tree_map(lambda x, k=k: np.asarray(x[k]), s_all.params), bucket, true
        )
        for (path, x), (_, y) in zip(_leaves(mine), _leaves(s.params), strict=True):
            np.testing.assert_allclose(x, np.asarray(y[0]), rtol=1e-5, atol=1e-5, err_msg=str(path))
        # the settings matter: the same network with the default lr 1e-3, wd 2.0 ends elsewhere
        default = np.asarray(alone_default[k][1].params["params"]["W_E"][0])
        assert np.abs(np.asarray(s.params["params"]["W_E"][0]) - default).max() > 1e-4
