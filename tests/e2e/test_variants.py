"""Variants (separate operand vocabulary, equals token, GeLU, 2–4 layers) and MLP models through
import, training, every metric, metrics along training and ``phasespace analyze``."""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasespace.cli import main
from phasespace.io import store
from phasespace.io.params import list_bucket_params, load_bucket_params
from phasespace.io.reference import BLOCK_KEYS, load_reference_checkpoint
from phasespace.models.mlp import MLPArch
from phasespace.models.registry import make_model
from phasespace.population.stack import init_params
from phasespace.spec.parse import parse_spec
from phasespace.sweep.reanalyze import analyze_reference_dir
from phasespace.sweep.run import run_sweep
from phasespace.tasks import all_pairs

REFERENCE_DIR = os.environ.get(
    "PHASESPACE_REFERENCE",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "reference"),
)


def _ref(run):
    path = os.path.join(REFERENCE_DIR, f"{run}.npz")
    if not os.path.exists(path):
        pytest.fail(f"reference checkpoint {path} not found (set PHASESPACE_REFERENCE)")
    return path


def _circularity64(table):
    """SPEC §5.3 in float64 NumPy."""
    t = np.asarray(table, np.float64)
    c = t - t.mean(0)
    u, s, _ = np.linalg.svd(c, full_matrices=False)
    sc = u[:, :4] * s[:4]
    p = t.shape[0]
    f = np.fft.fft(sc, axis=0)[1:]
    power = 2 * np.abs(f) ** 2 / (p * np.sum(sc**2, axis=0))
    return float(np.mean(np.clip(power.max(0), 0, 1)))


def test_every_reference_checkpoint_loads():
    paths = sorted(glob.glob(os.path.join(REFERENCE_DIR, "*.npz")))
    assert len(paths) == 18
    seen = set()
    for path in paths:
        arch, params, cfg = load_reference_checkpoint(path)
        seen.add((type(arch).__name__, arch.n_layers, arch.act, arch.diff_vocab))
        tokens = np.asarray(
            [[3, 5 + (arch.p if arch.diff_vocab else 0)], [58, 58 + (arch.p if arch.diff_vocab else 0)]]
        )
        logits = np.asarray(
            make_model(arch).apply(
                params,
                jnp.asarray(tokens),
                float(cfg.get("attn_coeff", 1.0)),
                1 / np.sqrt(arch.d_model // arch.n_heads),
            )
        )
        assert logits.shape == (2, arch.vocab) and np.all(np.isfinite(logits))
    # the variants are all there: separate vocabulary, GeLU, 2-4 layers, MLP models
    assert {("TransformerArch", 1, "relu", True), ("TransformerArch", 1, "gelu", False)} <= seen
    assert {("TransformerArch", n, "relu", False) for n in (2, 3, 4)} <= seen
    assert {("MLPArch", 2, "relu", False), ("MLPArch", 1, "relu", False)} <= seen


def test_separate_vocabulary_reference_reports_both_tables(tmp_path):
    """18c9ev5v5p (separate vocabulary): circularity from the first p rows, circularity_b from
    the second operand's rows p…2p−1 (float64 NumPy), gradient symmetricity as published."""
    arch, params, _ = load_reference_checkpoint(_ref("18c9ev5v5p"))
    assert arch.diff_vocab and arch.vocab == 118
    folder = tmp_path / "one"
    folder.mkdir()
    for ext in ("npz", "json"):
        os.symlink(os.path.join(REFERENCE_DIR, f"18c9ev5v5p.{ext}"), folder / f"18c9ev5v5p.{ext}")
    rows, arrays = analyze_reference_dir(str(folder))
    (row,) = rows
    w_e = np.asarray(params["params"]["W_E"])
    assert row["circularity"] == pytest.approx(_circularity64(w_e[:, :59].T), abs=1e-5)
    assert row["circularity_b"] == pytest.approx(_circularity64(w_e[:, 59:118].T), abs=1e-5)
    assert row["circularity"] != pytest.approx(row["circularity_b"], abs=1e-4)
    assert row["gradient_symmetricity"] == pytest.approx(0.997397659, abs=1e-4)  # published table
    assert row["accuracy"] == 1.0 and row["algorithm"] == "pizza"
    assert arrays["pc_frequency_b"].shape == (1, 12) and np.all(arrays["pc_frequency_b"][0][:8] > 0)


VARIANT_SPEC = {
    "name": "variants",
    "axes": {
        "p": 7,
        "d_model": 8,
        "n_layers": 2,
        "act": "gelu",
        "diff_vocab": True,
        "eqn_sign": True,
        "attention_rate": [0.0, 1.0],
        "seed": 0,
    },
    "train": {"steps": 20, "chunk_steps": 15, "log_every": 5},
    "analysis": {"every": 10},
}


@pytest.fixture(scope="module")
def variant_sweep(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sweeps") / "variants")
    return run_sweep(parse_spec(VARIANT_SPEC), out, progress=False)


SCALARS = (
    "accuracy",
    "gradient_symmetricity",
    "distance_irrelevance",
    "distance_irrelevance_largest_wrong",
    "circularity",
    "circularity_b",
    "param_norm",
)


@pytest.mark.slow  # long; run with `pytest -m slow` (see the README)
def test_variant_sweep_metrics_finite(variant_sweep):
    runs = variant_sweep.runs
    for k in SCALARS:
        assert np.all(np.isfinite(runs[k])), k
    assert np.all(runs["steps"] == 20)
    assert set(runs["algorithm"]) <= {"non-circular", "pizza", "clock", "mixed"}
    z = np.load(os.path.join(variant_sweep.path, "analysis.npz"))
    assert z["pc_frequency"].shape == (2, 7) and z["pc_frequency_b"].shape == (2, 7)
    assert z["circle_accuracy_by_difference"].shape == (2, 3, 7)


def test_metrics_history_has_a_step_axis(variant_sweep):
    """Every metric every 10 steps (chunks of 15 shortened to gcd = 5); the last record equals the
    final table."""
    h = np.load(os.path.join(variant_sweep.path, "metrics_history.npz"))
    np.testing.assert_array_equal(h["step"], [0, 10, 20])
    for k in SCALARS:
        assert h[k].shape == (2, 3), k
        np.testing.assert_allclose(h[k][:, -1], variant_sweep.runs[k], rtol=1e-6, err_msg=k)
    assert h["pc_frequency"].shape == (2, 3, 7)
    assert h["circle_fve_pizza"].shape == (2, 3, 3)
    # the networks change during training
    assert np.all(h["param_norm"][:, 0] != h["param_norm"][:, -1])


def test_analyze_sweep_recomputes_metrics(variant_sweep, capsys):
    before = store.read_csv(os.path.join(variant_sweep.path, "runs.csv"))
    (path,) = list_bucket_params(variant_sweep.path)
    b = load_bucket_params(path)
    np.testing.assert_array_equal(b.index, [0, 1])
    assert b.arch.diff_vocab and b.arch.eqn_sign and b.arch.n_layers == 2 and b.arch.act == "gelu"
    # a damaged table is repaired by recomputation
    store.write_csv(
        os.path.join(variant_sweep.path, "runs.csv"),
        list(before),
        [{c: (np.nan if c == "gradient_symmetricity" else before[c][i]) for c in before} for i in range(2)],
    )
    assert main(["analyze", variant_sweep.path]) == 0
    after = store.read_csv(os.path.join(variant_sweep.path, "runs.csv"))
    assert list(after)[: len(before)] == list(before)
    for k in (*SCALARS, "n_circles", "first_full_test_step", "train_loss"):
        np.testing.assert_allclose(after[k], before[k], rtol=1e-6, err_msg=k)
    assert "variants" not in capsys.readouterr().err


def test_mlp_sweep_uses_mlp_recipe(tmp_path):
    spec = parse_spec(
        {
            "axes": {"model": "mlp_alpha_prime", "p": 7, "d_model": 8, "seed": [0, 1]},
            "train": {"steps": 12, "chunk_steps": 6},
            "analysis": {"every": 6},
        }
    )
    res = run_sweep(spec, str(tmp_path / "mlp"), progress=False)
    (bucket,) = res.environment["buckets"]
    assert bucket["recipe"]["b2"] == 0.999 and bucket["recipe"]["warmup_steps"] == 0
    assert list(res.runs["model"]) == ["mlp_alpha_prime"] * 2
    for k in SCALARS:
        assert np.all(np.isfinite(res.runs[k])), k
    # α′ has two embedding tables: the second operand's circularity is its own
    assert np.all(res.runs["circularity"] != res.runs["circularity_b"])
    h = np.load(tmp_path / "mlp" / "metrics_history.npz")
    np.testing.assert_array_equal(h["step"], [0, 6, 12])


def _write_checkpoint(folder, run, arch, params, cfg):
    """Save engine parameters as a reference-format checkpoint (<run>.npz + <run>.json)."""
    P = params["params"]
    if isinstance(arch, MLPArch):
        state = {f"{layer}.{leaf}": np.asarray(v) for layer, d in P.items() for leaf, v in d.items()}
    else:
        state = {"embed.W_E": P["W_E"], "pos_embed.W_pos": P["W_pos"], "unembed.W_U": P["W_U"]}
        ref = {v: k for k, v in BLOCK_KEYS.items()}
        for i in range(arch.n_layers):
            state.update({f"blocks.{i}.{ref[k]}": v for k, v in P[f"blocks_{i}"].items()})
    np.savez(folder / f"{run}.npz", **{k: np.asarray(v) for k, v in state.items()})
    (folder / f"{run}.json").write_text(json.dumps(cfg))


def test_analyze_reference_cli_writes_table(tmp_path, capsys):
    """A folder of tiny, freshly initialised checkpoints in the reference format (α′ MLP models,
    two embedding tables) analysed by the command line as one vmapped population."""
    folder = tmp_path / "refs"
    folder.mkdir()
    arch = MLPArch(p=7, d_model=8, kind="X")
    params = init_params(arch, [0, 1])
    for i in range(2):
        one = jax.tree_util.tree_map(lambda x, i=i: x[i], params)
        _write_checkpoint(
            folder, f"mlp{i}", arch, one, {"C": 7, "d_hidden": 8, "model_type": "X", "frac": 0.8}
        )
    out = tmp_path / "table"
    assert main(["analyze", str(folder), "--out", str(out)]) == 0
    t = store.read_csv(str(out / "runs.csv"))
    assert list(t["run"]) == ["mlp0", "mlp1"]
    assert list(t["model"]) == ["mlp_alpha_prime"] * 2
    assert np.all(np.isnan(t["attention_rate"]))
    for k in SCALARS:
        assert np.all(np.isfinite(t[k])), k
    tokens, labels = all_pairs(arch.task)
    for i in range(2):
        one = jax.tree_util.tree_map(lambda x, i=i: x[i], params)
        logits = np.asarray(make_model(arch).apply(one, jnp.asarray(tokens)))
        assert t["accuracy"][i] == pytest.approx(float(np.mean(logits.argmax(-1) == labels)), abs=1e-7)
        e2 = np.asarray(one["params"]["embed2"]["weight"])
        assert t["circularity_b"][i] == pytest.approx(_circularity64(e2), abs=1e-4)
    z = np.load(out / "analysis.npz")
    assert list(z["run"]) == ["mlp0", "mlp1"] and z["pc_frequency_b"].shape == (2, 7)
    assert "mlp_alpha_prime" in capsys.readouterr().out


@pytest.mark.slow
def test_analyze_every_reference_checkpoint(tmp_path):
    """All 18 checkpoints: every metric finite where defined, and the values the published
    tables record for the runs they contain."""
    rows, arrays = analyze_reference_dir(REFERENCE_DIR)
    assert len(rows) == 18
    for r in rows:
        for k in (*SCALARS, "n_circles"):
            assert np.isfinite(r[k]), (r["run"], k)
    by = {r["run"]: r for r in rows}
    published = {  # 1l_fixedwidth.csv: gradient_sim, circularity
        "2k4ohj6bhd": (0.781316222, 0.734218111),
        "kboioj4ulz": (0.925995325, 0.658986121),
    }
    for run, (gs, circ) in published.items():
        assert by[run]["gradient_symmetricity"] == pytest.approx(gs, abs=1e-4)
        assert by[run]["circularity"] == pytest.approx(circ, abs=1e-4)
    assert by["p99zdpze5l"]["algorithm"] == "pizza" and by["l8k1hzciux"]["algorithm"] == "clock"
    assert json.dumps(sorted(arrays)) and arrays["circle_frequency"].shape == (18, 6)
