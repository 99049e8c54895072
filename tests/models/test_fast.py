"""The exact fast path (phasespace.models.fast) computes the plain model's logits and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasespace.models.fast import fast_logits, fold_unembedding, logits_table, supports_fast
from phasespace.models.transformer import Transformer, TransformerArch
from phasespace.population.flops import step_flops
from phasespace.population.stack import attn_scale, init_params, pad_params, unpad_params
from phasespace.tasks import all_pairs
from phasespace.training.step import Recipe, cross_entropy, init_state, train_chunk
from tests.helpers.numpy_reference import forward

jax.config.update("jax_default_matmul_precision", "highest")

CASES = [
    # (bucket, true width): fold (4d > 3V) and no fold, ReLU, GeLU and tanh, padded, separate vocabulary
    (TransformerArch(p=7, d_model=16), 16),
    (TransformerArch(p=7, d_model=16, act="gelu"), 16),
    (TransformerArch(p=13, d_model=8), 8),
    (TransformerArch(p=7, d_model=20, act="gelu"), 14),
    (TransformerArch(p=5, d_model=16, diff_vocab=True), 12),
    (TransformerArch(p=5, d_model=16, act="tanh", diff_vocab=True), 10),
]


def _network(arch: TransformerArch, true_width: int, seed: int = 3):
    true = arch.with_width(true_width)
    params = pad_params(init_params(true, [seed]), true, arch)
    params = jax.tree_util.tree_map(lambda x: x[0], params)
    # Non-zero biases so that every term of the fast path is exercised.
    k1, k2 = jax.random.split(jax.random.key(seed + 100))
    blk = params["params"]["blocks_0"]
    blk["b_in"] = blk["b_in"] + 0.1 * jax.random.normal(k1, blk["b_in"].shape) * (blk["W_in"][:, 0] != 0)
    blk["b_out"] = blk["b_out"] + 0.1 * jax.random.normal(k2, blk["b_out"].shape) * (blk["W_out"][:, 0] != 0)
    return params, jnp.float32(attn_scale(true_width, arch.n_heads))


def _loss(logits_fn, labels, weights):
    def f(params):
        logits = logits_fn(params)
        # cross-entropy plus a random linear functional: every logit gets a distinct cotangent
        return jnp.mean(cross_entropy(logits, labels)) + jnp.sum(weights * logits) / logits.shape[0]

    return f


@pytest.mark.parametrize("arch,true_width", CASES)
def test_fast_matches_plain_logits_and_gradients(arch, true_width):
    params, scale = _network(arch, true_width)
    tokens, labels = all_pairs(arch.task)
    model = Transformer(arch)
    weights = jax.random.normal(jax.random.key(7), (arch.p**2, arch.vocab))

    def plain_fn(p, a):
        return model.apply(p, tokens, a, scale)

    def fast_fn(p, a):
        return fast_logits(p, arch, a, scale)

    def value_and_grad(fn):
        return jax.jit(lambda p, a: (fn(p, a), jax.grad(_loss(lambda q: fn(q, a), labels, weights))(p)))

    plain_vg, fast_vg = value_and_grad(plain_fn), value_and_grad(fast_fn)
    for alpha in (0.0, 0.3, 1.0):
        a = jnp.float32(alpha)
        plain, g_plain = plain_vg(params, a)
        fast, g_fast = fast_vg(params, a)
        assert fast.shape == (arch.p**2, arch.vocab)
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5 * float(jnp.abs(plain).max()))
        for path, gp in jax.tree_util.tree_leaves_with_path(g_plain):
            gf = g_fast
            for k in path:
                gf = gf[k.key]
            msg = f"alpha={alpha} {jax.tree_util.keystr(path)}"
            g_scale = max(float(jnp.abs(gp).max()), 1e-30)
            np.testing.assert_allclose(gf, gp, rtol=1e-5, atol=1e-5 * g_scale, err_msg=msg)
            # Zero-padded entries get exactly zero gradient (padded networks train identically).
            np.testing.assert_array_equal(np.asarray(gf)[np.asarray(gp) == 0], 0.0, err_msg=msg)


def test_fast_tanh_logits_match_float64_reference():
    """The fast path's tanh logit table equals the float64 NumPy transcription of SPEC §2 (padded
    bucket 16, true width 12, non-zero biases, α = 0.4; ReLU and GeLU: the plain model's tests)."""
    act = "tanh"
    arch = TransformerArch(p=7, d_model=16, act=act)
    params, scale = _network(arch, 12)
    tokens, _ = all_pairs(arch.task)
    fast = np.asarray(fast_logits(params, arch, jnp.float32(0.4), scale))
    true = arch.with_width(12)
    sliced = unpad_params(jax.tree_util.tree_map(np.asarray, params), arch, true)
    ref = forward(sliced, tokens, 0.4, arch.n_heads, act)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_cases_cover_both_unembedding_forms():
    assert {fold_unembedding(a) for a, _ in CASES} == {True, False}


def test_fast_path_applies_only_to_one_block_two_tokens():
    assert supports_fast(TransformerArch(p=5, d_model=8))
    assert supports_fast(TransformerArch(p=5, d_model=8, diff_vocab=True))
    assert not supports_fast(TransformerArch(p=5, d_model=8, n_layers=2))
    assert not supports_fast(TransformerArch(p=5, d_model=8, eqn_sign=True))
    arch = TransformerArch(p=5, d_model=8, n_layers=2)
    params, scale = _network(TransformerArch(p=5, d_model=8), 8)
    with pytest.raises(ValueError, match="n_layers=2"):
        fast_logits(params, arch, jnp.float32(0.5), scale)
    # logits_table falls back to the plain model where the fast path does not apply.
    p2 = jax.tree_util.tree_map(lambda x: x[0], init_params(arch, [1]))
    tokens, _ = all_pairs(arch.task)
    np.testing.assert_array_equal(
        logits_table(arch, p2, jnp.float32(0.5), scale, tokens, fast=True),
        Transformer(arch).apply(p2, tokens, jnp.float32(0.5), scale),
    )


def test_training_steps_agree_with_plain_model():
    """Five AdamW steps through train_chunk with and without the fast path stay together."""
    arch = TransformerArch(p=7, d_model=12, act="gelu")
    params, scale = _network(arch, 12)
    tokens, labels = all_pairs(arch.task)
    rng = np.random.default_rng(0)
    hp = {
        "attention_rate": jnp.float32(0.6),
        "attn_scale": scale,
        "lr": jnp.float32(1e-2),
        "weight_decay": jnp.float32(1.0),
        "train_mask": jnp.asarray(rng.random(49) < 0.8),
        "labels": jnp.asarray(labels),
    }
    out = {}
    for fast in (False, True):
        recipe = Recipe(steps=5, warmup_steps=0, fast=fast)
        state = init_state(recipe, params, hp)
        out[fast] = train_chunk(arch, recipe, 5, state, hp, jnp.asarray(tokens))
    np.testing.assert_allclose(out[True][1]["train_loss"], out[False][1]["train_loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(out[True][0].params), jax.tree.leaves(out[False][0].params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def test_flop_counts():
    """Analytic counts: the plain count by hand at d = 8, and the fast path doing less at p = 59."""
    arch = TransformerArch(p=5, d_model=8)
    d, dm, v = 8, 32, 5
    # last block: K,V at 2 positions (2·2·d²), Q at 1 (d²), scores/mix (2·2·d), W_O (d²), MLP (2·d·dm)
    per_pair = 4 * d * d + d * d + 4 * d + d * d + 2 * d * dm + d * v
    assert step_flops(arch, fast=False) == 6.0 * 25 * per_pair
    for width, ratio in ((32, 1.5), (128, 4.0), (512, 10.0)):
        a = TransformerArch(p=59, d_model=width)
        assert step_flops(a, fast=False) / step_flops(a, fast=True) > ratio
