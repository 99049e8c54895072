"""The appendix MLP models α, α′, β, γ, δ (SPEC §3): forward pass against a float64 NumPy
transcription, initialisation, reference checkpoints, padding and vmapped training."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasespace.analysis.network import analyze_population
from phasespace.io.reference import CheckpointError, load_reference_checkpoint, mlp_params_from_state_dict
from phasespace.models.mlp import MLPArch, MLPModel
from phasespace.models.registry import embedding_tables, make_arch, recipe_defaults
from phasespace.population.stack import NetworkSpec, build_population, init_params, pad_params, unpad_params
from phasespace.spec.networks import Recipe
from phasespace.tasks import Task, all_pairs, train_mask
from phasespace.training.loop import train_population

REFERENCE_DIR = os.environ.get(
    "PHASESPACE_REFERENCE",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "reference"),
)
BETA_RUNS = ("amw6ox6bzn", "p71frej8t7")
DELTA_RUNS = ("7r4zst7evs", "qlvxqhkvit")
KINDS = ("A", "X", "B", "C", "D")


def numpy_forward(params, kind, tokens):
    """SPEC §3 in float64 NumPy on the engine's parameter tree."""
    P = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params["params"])
    a, b = tokens[:, 0], tokens[:, 1]
    if kind == "X":
        ea, eb = P["embed1"]["weight"][a], P["embed2"]["weight"][b]
    else:
        ea, eb = P["embed"]["weight"][a], P["embed"]["weight"][b]
    w1, b1 = P["l1"]["weight"], P["l1"]["bias"]
    relu = lambda x: np.maximum(x, 0.0)
    if kind == "D":
        h = relu(np.concatenate([ea, eb], axis=1) @ w1.T + b1)
    elif kind == "C":
        h = relu(ea @ w1.T + eb @ w1.T + 2 * b1)
    else:
        h = relu((ea + eb) @ w1.T + b1)
    if kind in ("B", "C"):
        h = relu(h @ P["l2"]["weight"].T + P["l2"]["bias"])
    return h @ P["unembed"]["weight"].T


def _one(tree, i=0):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def _load(run):
    path = os.path.join(REFERENCE_DIR, f"{run}.npz")
    if not os.path.exists(path):
        pytest.fail(f"reference checkpoint {path} not found (set PHASESPACE_REFERENCE)")
    return load_reference_checkpoint(path)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_float64_spec(kind):
    arch = MLPArch(p=7, d_model=12, kind=kind)
    params = _one(init_params(arch, [3]))
    tokens, _ = all_pairs(arch.task)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(MLPModel(arch).apply(params, jnp.asarray(tokens)))
    np.testing.assert_allclose(got, numpy_forward(params, kind, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["B", "D", "X"])
def test_init_divisors_and_shapes(kind):
    arch = MLPArch(p=59, d_model=256, kind=kind)
    P = _one(init_params(arch, [0]))["params"]
    e = 128 if kind == "D" else 256
    tables = ["embed1", "embed2"] if kind == "X" else ["embed"]
    for t in tables:
        assert P[t]["weight"].shape == (59, e)
        assert np.std(P[t]["weight"]) == pytest.approx(1 / np.sqrt(128), rel=0.05)
    assert P["unembed"]["weight"].shape == (59, 256)
    assert np.std(P["unembed"]["weight"]) == pytest.approx(1 / np.sqrt(256), rel=0.05)
    w = np.asarray(P["l1"]["weight"])
    assert w.shape == (256, 256)
    bound = 1 / np.sqrt(256)  # fan_in = e (2e for δ) = 256
    assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) > 0.99 * bound
    assert np.std(w) == pytest.approx(bound / np.sqrt(3), rel=0.05)  # uniform(±bound)
    assert ("l2" in P) == (kind in ("B", "C"))


@pytest.fixture(scope="module")
def reference_mlps():
    return {run: _load(run) for run in BETA_RUNS + DELTA_RUNS}


def _analyze(loaded, runs):
    arch = loaded[runs[0]][0]
    params = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[loaded[r][1] for r in runs])
    mask = np.stack([train_mask(arch.p, 0.8, 0)] * len(runs))
    return analyze_population(arch, params, np.zeros(len(runs)), np.ones(len(runs)), mask)


def test_reference_beta_gradient_symmetricity_is_one(reference_mlps):
    assert reference_mlps[BETA_RUNS[0]][0] == MLPArch(59, 256, "B")
    m = _analyze(reference_mlps, BETA_RUNS)
    np.testing.assert_allclose(m["gradient_symmetricity"], 1.0, atol=1e-6)
    np.testing.assert_array_equal(m["accuracy"], 1.0)


def test_reference_delta_asymmetric_and_distance_irrelevant(reference_mlps):
    assert reference_mlps[DELTA_RUNS[0]][0] == MLPArch(59, 256, "D")
    m = _analyze(reference_mlps, DELTA_RUNS)
    assert np.all(np.abs(m["gradient_symmetricity"]) < 0.05)
    assert np.all(m["distance_irrelevance"] > 0.9)
    np.testing.assert_array_equal(m["accuracy"], 1.0)


@pytest.mark.parametrize("run", BETA_RUNS + DELTA_RUNS)
def test_reference_mlp_forward_matches_numpy(reference_mlps, run):
    arch, params, cfg = reference_mlps[run]
    tokens, labels = all_pairs(arch.task)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(MLPModel(arch).apply(params, jnp.asarray(tokens)))
    want = numpy_forward(params, cfg["model_type"], tokens)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.mean(want.argmax(-1) == labels) == 1.0


def test_state_dict_errors_name_the_key():
    arch = MLPArch(p=5, d_model=8, kind="B")
    params = _one(init_params(arch, [0]))["params"]
    state = {f"{k}.{leaf}": np.asarray(v) for k, d in params.items() for leaf, v in d.items()}
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(np.array_equal, mlp_params_from_state_dict(state, arch)["params"], params)
    )
    bad = dict(state, **{"l2.weight": np.zeros((8, 7), np.float32)})
    with pytest.raises(ValueError, match=r"'l2.weight'.*\(8, 8\).*\(8, 7\)"):
        mlp_params_from_state_dict(bad, arch)
    missing = {k: v for k, v in state.items() if k != "l1.bias"}
    with pytest.raises(ValueError, match=r"missing key 'l1\.bias'"):
        mlp_params_from_state_dict(missing, arch)


def test_reference_mlp_mismatch_raises_checkpoint_error(tmp_path):
    np.savez(tmp_path / "x.npz", **{"embed.weight": np.zeros((59, 3), np.float32)})
    (tmp_path / "x.json").write_text('{"C": 59, "model_type": "D", "d_hidden": 256}')
    with pytest.raises(CheckpointError, match=r"embed\.weight"):
        load_reference_checkpoint(str(tmp_path / "x.npz"))


@pytest.mark.parametrize("kind", ["D", "X", "C"])
def test_padding_is_exact(kind):
    true, bucket = MLPArch(7, 6, kind), MLPArch(7, 10, kind)
    params = _one(init_params(true, [1]))
    padded = pad_params(params, true, bucket)
    tokens, _ = all_pairs(true.task)
    with jax.default_matmul_precision("highest"):
        a = MLPModel(true).apply(params, jnp.asarray(tokens))
        b = MLPModel(bucket).apply(padded, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6)
    back = unpad_params(padded, bucket, true)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
    ta, tb = embedding_tables(bucket, padded)
    assert ta.shape == (7, bucket.d_embed)
    assert (tb is ta) == (kind != "X")


def test_mlp_recipe_defaults():
    assert recipe_defaults(make_arch("mlp_delta", 7, 8)) == {
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "warmup_steps": 0,
    }
    assert recipe_defaults(make_arch("transformer", 7, 8))["warmup_steps"] == 10


def test_population_trains_vmapped_and_matches_alone():
    """Three δ networks of widths 6, 8, 10 trained together in a width-10 bucket (vmapped); one of
    them ends up where it does trained alone at its own width (MLP recipe: betas (0.9, 0.999),
    no warm-up)."""
    p, steps = 7, 25
    recipe = Recipe(steps=steps, b2=0.999, warmup_steps=0)
    nets = [NetworkSpec(seed=s, attention_rate=0.0, d_model=d, lr=3e-3) for s, d in [(0, 6), (1, 8), (2, 10)]]
    bucket = MLPArch(p, 10, "D")
    pop = build_population(bucket, nets)
    state, hist = train_population(pop, recipe, chunk_steps=10)
    assert hist["train_loss"].shape == (3, steps)
    assert np.all(hist["train_loss"][:, -1] < hist["train_loss"][:, 0])
    # no warm-up: the very first update already changes the loss (with the transformer's
    # warm-up the first update is a no-op and the first two losses are equal)
    assert np.all(hist["train_loss"][:, 1] != hist["train_loss"][:, 0])
    i = 1  # the width-8 network, trained alone at its own width (chunked differently)
    true = bucket.with_width(nets[i].d_model)
    s_alone, h_alone = train_population(build_population(true, [nets[i]]), recipe, chunk_steps=25)
    mine = unpad_params(_one(state.params, i), bucket, true)
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6),
        mine,
        _one(s_alone.params),
    )
    np.testing.assert_allclose(hist["train_loss"][i], h_alone["train_loss"][0], rtol=2e-5)
    # the padding stays exactly zero (l1 input halves [E_a ; E_b] padded from e = 4 to 5)
    w = np.asarray(state.params["params"]["l1"]["weight"][i]).reshape(10, 2, 5)
    assert np.all(w[true.d_model :] == 0) and np.all(w[:, :, true.d_embed :] == 0)


def test_task_of_mlp_arch():
    arch = MLPArch(11, 8, "A")
    assert arch.task == Task(11) and arch.vocab == 11 and arch.n_ctx == 2
    with pytest.raises(ValueError, match="kind"):
        MLPArch(11, 8, "Z")
