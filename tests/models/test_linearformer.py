"""The reference's attention-free Linearformer: forward pass against a float64 NumPy transcription,
init statistics, exact zero padding into wider buckets, the FLOP count, the registry and the
reference state_dict importer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasespace.analysis.network import analyze_population
from phasespace.io.reference import (
    CheckpointError,
    arch_from_reference_config,
    linearformer_params_from_state_dict,
)
from phasespace.models.linearformer import Linearformer, LinearformerArch
from phasespace.models.registry import (
    arch_from_dict,
    arch_to_dict,
    embedding_tables,
    family,
    make_arch,
    recipe_defaults,
    set_embedding_tables,
)
from phasespace.population.buckets import plan_buckets
from phasespace.population.flops import step_flops
from phasespace.population.stack import build_population, init_params, pad_params, unpad_params
from phasespace.spec import SpecError, expand, parse_spec
from phasespace.spec.networks import NetworkSpec
from phasespace.tasks import all_pairs
from phasespace.training.loop import train_population
from phasespace.training.step import Recipe
from tests.helpers.numpy_reference import linearformer_forward
from tests.population.test_buckets import _dot_flops


def _one(params, k=0):
    return jax.tree_util.tree_map(lambda x: np.asarray(x[k]), params)


def _with_biases(params, seed=0):
    """Non-zero biases (zero at init), so that the forward test exercises every term."""
    rng = np.random.default_rng(seed)
    for name, blk in params["params"].items():
        if name.startswith("blocks_"):
            blk["b_in"] = (0.3 * rng.standard_normal(blk["b_in"].shape)).astype(np.float32)
    return params


@pytest.mark.parametrize(
    "arch",
    [
        LinearformerArch(p=7, d_model=11),  # e = 5, one zero of padding
        LinearformerArch(p=7, d_model=11, n_layers=2, act="tanh"),
        LinearformerArch(p=7, d_model=13, act="gelu", eqn_sign=True),  # n_ctx = 3, e = 4
        LinearformerArch(p=7, d_model=14, n_layers=2, act="tanh", diff_vocab=True, eqn_sign=True),
    ],
    ids=str,
)
def test_forward_matches_float64_reference(arch):
    params = _with_biases(_one(init_params(arch, [3])))
    tokens, _ = all_pairs(arch.task)
    ours = np.asarray(Linearformer(arch).apply(params, jnp.asarray(tokens), 0.5, 1.0))
    ref = linearformer_forward(params, tokens, arch.act)
    assert ours.shape == (arch.p**2, arch.vocab)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # the attention rate and softmax scale are ignored (no attention)
    np.testing.assert_array_equal(
        ours, np.asarray(Linearformer(arch).apply(params, jnp.asarray(tokens), 0.0, 7.0))
    )


def test_init_shapes_zero_biases_and_scales():
    """The reference's init: W_E (e, V) N(0,1)/√e, W_in (d, d) N(0,1)/√d, b_in 0, W_U (d, V) N(0,1)/√V."""
    arch = LinearformerArch(p=59, d_model=257, n_layers=2, eqn_sign=True)  # e = 85, V = 60
    P = _one(init_params(arch, [0]))["params"]
    assert set(P) == {"W_E", "W_U", "blocks_0", "blocks_1"}
    assert P["W_E"].shape == (85, 60) and P["W_U"].shape == (257, 60)
    for name, x, std in (
        ("W_E", P["W_E"], 1 / np.sqrt(85)),
        ("W_U", P["W_U"], 1 / np.sqrt(60)),
        ("W_in0", P["blocks_0"]["W_in"], 1 / np.sqrt(257)),
        ("W_in1", P["blocks_1"]["W_in"], 1 / np.sqrt(257)),
    ):
        assert abs(np.std(x) / std - 1) < 0.05, name
        assert abs(np.mean(x)) < 5 * std / np.sqrt(x.size), name
    for blk in ("blocks_0", "blocks_1"):
        assert P[blk]["W_in"].shape == (257, 257) and np.all(P[blk]["b_in"] == 0)
    assert not np.array_equal(P["blocks_0"]["W_in"], P["blocks_1"]["W_in"])


def test_arch_validation_and_registry():
    with pytest.raises(ValueError, match="act='swish'"):
        LinearformerArch(p=7, d_model=8, act="swish")
    with pytest.raises(ValueError, match="n_ctx=3"):
        LinearformerArch(p=7, d_model=2, eqn_sign=True)
    with pytest.raises(ValueError, match="n_layers=0"):
        LinearformerArch(p=7, d_model=8, n_layers=0)
    arch = make_arch("linearformer", 7, 11, n_layers=2, n_heads=4, act="tanh", diff_vocab=True, eqn_sign=True)
    assert arch == LinearformerArch(7, 11, 2, "tanh", True, True) and family(arch) == "linearformer"
    assert arch.d_embed == 3 and arch.n_tail == 2 and arch.n_heads == 1
    assert arch_from_dict(arch_to_dict(arch)) == arch
    # the transformer's recipe: AdamW betas (0.9, 0.98), 10-step warm-up (train-main.py)
    assert recipe_defaults(arch) == {"b1": 0.9, "b2": 0.98, "eps": 1e-8, "warmup_steps": 10}


def test_embedding_tables_are_W_E_columns():
    arch = LinearformerArch(p=5, d_model=9, diff_vocab=True)
    params = _one(init_params(arch, [1]))
    w_e = params["params"]["W_E"]
    a, b = embedding_tables(arch, params)
    np.testing.assert_array_equal(a, w_e[:, :5].T)
    np.testing.assert_array_equal(b, w_e[:, 5:10].T)
    new = set_embedding_tables(arch, params, jnp.zeros((5, 4)), jnp.ones((5, 4)))
    tokens = np.array([[2, 5 + 3]])
    x = np.asarray(Linearformer(arch).apply(new, tokens, method="embed"))
    np.testing.assert_array_equal(x[0], [np.zeros(4), np.ones(4)])


# --------------------------------------------------------------------------------------------- #
# Width buckets


def test_padding_is_exact_forward_and_round_trip():
    """Widths 9 (e = 4, tail 1) and 10 (e = 5) into buckets 13 (e = 6, tail 1) and 14."""
    for true, bucket in ((9, 13), (10, 14), (8, 13)):
        t, b = (
            LinearformerArch(7, true, n_layers=2, act="tanh"),
            LinearformerArch(7, bucket, n_layers=2, act="tanh"),
        )
        params = _with_biases(_one(init_params(t, [2])))
        padded = pad_params(params, t, b)
        tokens, _ = all_pairs(t.task)
        lt = np.asarray(Linearformer(t).apply(params, tokens))
        lb = np.asarray(Linearformer(b).apply(padded, tokens))
        np.testing.assert_allclose(lb, lt, rtol=1e-6, atol=1e-6)
        back = unpad_params(padded, b, t)
        for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params), strict=True):
            np.testing.assert_array_equal(x, y)
    # a tail column would be dropped: 9 mod 2 = 1 cannot go into 12 (mod 2 = 0)
    with pytest.raises(ValueError, match="tail column"):
        pad_params(params, LinearformerArch(7, 9), LinearformerArch(7, 12))


def test_padded_params_equal_true_width_after_20_steps():
    """A width-8 network (e = 2, tail 2) trained 20 AdamW steps padded into a bucket of width 11
    (E = 3, tail 2), beside a width-11 network, equals it trained alone: the padded entries stay
    exactly zero, its embedding blocks and tail columns of the first W_in train as unpadded."""
    bucket = LinearformerArch(p=7, d_model=11, n_layers=2, act="tanh", eqn_sign=True)  # e = 3, tail 2
    nets = [
        NetworkSpec(seed=3, attention_rate=0.0, d_model=8),
        NetworkSpec(seed=4, attention_rate=0.0, d_model=11),
    ]
    recipe = Recipe(steps=20, fast=False)
    s_pad, h_pad = train_population(build_population(bucket, nets), recipe, chunk_steps=20)
    for k, n in enumerate(nets[:1]):  # (the second has the bucket's width)
        true = bucket.with_width(n.d_model)
        pop = build_population(true, [n])
        s, h = train_population(pop, recipe, chunk_steps=20)
        padded = _one(s_pad.params, k)
        mine = unpad_params(padded, bucket, true)
        ref = _one(s.params)
        for (path, x), (_, y) in zip(
            jax.tree_util.tree_leaves_with_path(mine), jax.tree_util.tree_leaves_with_path(ref), strict=True
        ):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=str(path))
        # the padding entries stay exactly zero (not merely small)
        ones = jax.tree_util.tree_map(np.ones_like, ref)
        pad_mask = jax.tree_util.tree_leaves(pad_params(ones, true, bucket))
        for x, m in zip(jax.tree_util.tree_leaves(padded), pad_mask, strict=True):
            assert np.all(np.asarray(x)[np.asarray(m) == 0] == 0)
        np.testing.assert_allclose(h_pad["train_loss"][k], h["train_loss"][0], rtol=1e-5)
        assert np.abs(ref["params"]["W_E"] - _one(pop.params)["params"]["W_E"]).max() > 1e-3


def test_planner_shares_buckets_only_within_a_residue():
    raw = {
        "axes": {"model": "linearformer", "p": 7, "d_model": [8, 9, 10, 11, 12], "seed": [0, 1]},
        "train": {"steps": 10},
    }
    buckets = plan_buckets(expand(parse_spec(raw)), max_buckets=1)
    widths = {b.arch.d_model: sorted({n.values["d_model"] for n in b.networks}) for b in buckets}
    assert widths == {12: [8, 10, 12], 11: [9, 11]}
    assert {b.key for b in buckets} == {"p7_linearformer_L1_relu_D12", "p7_linearformer_L1_relu_D11"}


def test_step_flops_equals_traced_products():
    arch = LinearformerArch(p=5, d_model=11, n_layers=2, eqn_sign=True)
    params = jax.eval_shape(lambda: Linearformer(arch).init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32)))
    tokens, labels = all_pairs(arch.task)

    def loss(p):
        logits = Linearformer(arch).apply(p, jnp.asarray(tokens))
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(25), labels])

    traced = _dot_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    assert step_flops(arch) == traced == 3 * 25 * (2 * 2 * 11 * 11 + 2 * 11 * 6)  # V = p + 1


# --------------------------------------------------------------------------------------------- #
# Spec and reference checkpoints


def test_spec_accepts_linearformer_options_and_refuses_narrow_widths():
    raw = {
        "axes": {
            "model": ["transformer", "linearformer"],
            "act": ["relu", "tanh"],
            "n_layers": [1, 2],
            "eqn_sign": [False, True],
            "p": 7,
            "d_model": 12,
            "attention_rate": [0.0, 1.0],
        }
    }
    nets = expand(parse_spec(raw))
    lin = [n for n in nets if n.values["model"] == "linearformer"]
    assert len(lin) == 8 and len(nets) == 8 + 16  # the attention-rate axis collapsed for it
    assert all(np.isnan(n.row_values()["attention_rate"]) for n in lin)
    with pytest.raises(SpecError, match=r"axes.d_model=2: the linearformer needs d_model ≥ n_ctx=3"):
        parse_spec({"axes": {"model": "linearformer", "p": 7, "d_model": 2, "n_heads": 1, "eqn_sign": True}})
    with pytest.raises(SpecError, match=r"axes.act='tanh': the MLP models \(axes.model=\['mlp_beta'\]\)"):
        parse_spec({"axes": {"model": ["linearformer", "mlp_beta"], "p": 7, "d_model": 8, "act": "tanh"}})


def test_reference_state_dict_import():
    cfg = {"C": 7, "d_model": 11, "n_layers": 2, "n_heads": 4, "act_fn": "Tanh", "use_linear": True}
    arch = arch_from_reference_config({**cfg, "eqn_sign": True})
    assert arch == LinearformerArch(7, 11, 2, "tanh", eqn_sign=True)
    params = _one(init_params(arch, [5]))["params"]
    state = {
        "embed.W_E": params["W_E"],
        "unembed.W_U": params["W_U"],
        **{f"blocks.{i}.{k}": params[f"blocks_{i}"][k] for i in range(2) for k in ("W_in", "b_in")},
    }
    got = linearformer_params_from_state_dict(state, arch)["params"]
    for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(CheckpointError, match=r"key 'embed.W_E': expected shape \(3, 8\), found \(3, 7\)"):
        linearformer_params_from_state_dict({**state, "embed.W_E": params["W_E"][:, :7]}, arch)


def test_analysis_of_padded_network_equals_true_width():
    """Every metric of a padded Linearformer equals that of the same network at its true width
    (the gradient symmetricity through the token embeddings before concatenation included)."""
    true, bucket = LinearformerArch(p=7, d_model=9, act="tanh"), LinearformerArch(p=7, d_model=15, act="tanh")
    params = _with_biases(_one(init_params(true, [6])))
    stack = lambda t: jax.tree_util.tree_map(lambda x: np.asarray(x)[None], t)
    mask = np.asarray(np.random.default_rng(0).random((1, 49)) < 0.8)
    zeros = np.zeros(1, np.float32)
    m_true = analyze_population(true, stack(params), zeros, zeros + 1, mask)
    m_pad = analyze_population(bucket, stack(pad_params(params, true, bucket)), zeros, zeros + 1, mask)
    for key in ("gradient_symmetricity", "distance_irrelevance", "circularity", "param_norm", "loss"):
        assert np.isfinite(m_true[key][0]), key
        np.testing.assert_allclose(m_pad[key][0], m_true[key][0], rtol=2e-5, atol=2e-5, err_msg=key)


def test_state_bytes_count_the_linearformer_parameters():
    """The memory plan's per-network state: parameters + two AdamW moments, float32, so widening
    by Δ parameters adds 12·Δ bytes (W_E e×V, W_U d×V, n_layers × (d² + d))."""
    from phasespace.training.program import state_bytes_per_network

    def n_params(a):
        return a.d_embed * a.vocab + a.d_model * a.vocab + a.n_layers * (a.d_model**2 + a.d_model)

    small, big = LinearformerArch(7, 9, n_layers=2), LinearformerArch(7, 20, n_layers=2)
    recipe = Recipe(steps=10)
    diff = state_bytes_per_network(big, recipe) - state_bytes_per_network(small, recipe)
    assert diff == 12 * (n_params(big) - n_params(small))
