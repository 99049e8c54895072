import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasespace.models.transformer import Transformer, TransformerArch
from phasespace.population.stack import attn_scale, init_params
from phasespace.tasks import Task, all_pairs
from tests.helpers.numpy_reference import forward


def _one(params):
    return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), params)


@pytest.mark.parametrize(
    "arch,alpha",
    [
        (TransformerArch(p=7, d_model=16), 0.0),
        (TransformerArch(p=7, d_model=16), 1.0),
        (TransformerArch(p=7, d_model=18, act="gelu"), 0.37),  # width not divisible by 4
        (TransformerArch(p=5, d_model=12, n_layers=3), 0.5),
        (TransformerArch(p=5, d_model=8, n_layers=2, diff_vocab=True, eqn_sign=True), 0.8),
        (TransformerArch(p=5, d_model=12, n_layers=2, act="tanh", eqn_sign=True), 0.2),
    ],
)
def test_forward_matches_float64_spec(arch, alpha):
    params = _one(init_params(arch, [3]))
    tokens, _ = all_pairs(arch.task)
    ours = Transformer(arch).apply(params, tokens, jnp.float32(alpha), jnp.float32(attn_scale(arch.d_model)))
    ref = forward(params, tokens, alpha, arch.n_heads, arch.act)
    assert ours.shape == (arch.p**2, arch.vocab)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())


def test_alpha_zero_sums_values():
    """At α = 0 each position receives the SUM of the value vectors (all-ones J, not J/n)."""
    arch = TransformerArch(p=5, d_model=8)
    params = _one(init_params(arch, [0]))
    tokens = np.array([[1, 2]], np.int32)
    m = Transformer(arch)
    # Double W_Q: at α = 0 the softmax is ignored, so logits must not change.
    p2 = jax.tree_util.tree_map(lambda x: x, params)
    p2["params"]["blocks_0"]["W_Q"] = params["params"]["blocks_0"]["W_Q"] * 3.0
    a = m.apply(params, tokens, jnp.float32(0.0), jnp.float32(0.5))
    b = m.apply(p2, tokens, jnp.float32(0.0), jnp.float32(0.5))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    c = m.apply(p2, tokens, jnp.float32(1.0), jnp.float32(0.5))
    assert not np.allclose(a, c)


def test_init_divisors():
    """SPEC §2: N(0,1)/divisor per parameter; biases zero."""
    arch = TransformerArch(p=59, d_model=128)
    p = _one(init_params(arch, [0]))["params"]
    b = p["blocks_0"]
    expect = {
        "W_E": (p["W_E"], 1 / np.sqrt(128)),
        "W_U": (p["W_U"], 1 / np.sqrt(59)),
        "W_Q": (b["W_Q"], 1 / np.sqrt(128)),
        "W_O": (b["W_O"], 1 / np.sqrt(128)),
        "W_in": (b["W_in"], 1 / np.sqrt(512)),
        "W_out": (b["W_out"], 1 / np.sqrt(128)),
    }
    for name, (x, std) in expect.items():
        assert abs(np.std(x) / std - 1) < 0.05, name
        assert abs(np.mean(x)) < 0.05 * std * 5, name
    assert np.all(b["b_in"] == 0) and np.all(b["b_out"] == 0)
    assert b["W_Q"].shape == (4, 32, 128) and b["W_O"].shape == (128, 128) and b["W_in"].shape == (512, 128)


def test_init_depends_only_on_seed():
    arch = TransformerArch(p=7, d_model=8)
    a = _one(init_params(arch, [5]))
    b = jax.tree_util.tree_map(lambda x: np.asarray(x[2]), init_params(arch, [1, 2, 5, 9]))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_arch_validation():
    with pytest.raises(ValueError, match="act"):
        TransformerArch(p=7, d_model=8, act="swish")
    with pytest.raises(ValueError, match="d_model"):
        TransformerArch(p=7, d_model=3)
    assert Task(7).vocab == TransformerArch(p=7, d_model=8).vocab
