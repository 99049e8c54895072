"""Key frequencies, circles, circle isolation, logit FVE and classification (SPEC §5.4–5.7):
reference values of Models A and B (SPEC §7) and analytic constructions."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasespace.analysis import circles, classify, metrics
from phasespace.analysis.circuits import CircuitOptions, analyze_full, isolated_logits
from phasespace.defaults import ALGORITHMS, THRESHOLDS
from phasespace.io.reference import load_reference_checkpoint
from phasespace.population.stack import attn_scale
from phasespace.tasks import Task, all_pairs, train_mask

REFERENCE_DIR = os.environ.get(
    "PHASESPACE_REFERENCE",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "reference"),
)
MODEL_A, MODEL_B = "p99zdpze5l", "l8k1hzciux"


def _load(run):
    path = os.path.join(REFERENCE_DIR, f"{run}.npz")
    if not os.path.exists(path):
        pytest.fail(f"reference checkpoint {path} not found (set PHASESPACE_REFERENCE)")
    return load_reference_checkpoint(path)


@pytest.fixture(scope="module")
def models_ab():
    """Models A and B (same architecture) analysed together as a population of two."""
    (arch, pa, ca), (arch_b, pb, cb) = _load(MODEL_A), _load(MODEL_B)
    assert arch == arch_b
    params = jax.tree_util.tree_map(lambda a, b: np.stack([a, b]), pa, pb)
    hp = {
        "attention_rate": np.asarray([ca["attn_coeff"], cb["attn_coeff"]], np.float32),
        "attn_scale": np.full(2, attn_scale(arch.d_model), np.float32),
        "train_mask": np.stack([train_mask(arch.p, 0.8, 0)] * 2),
    }
    scalars, arrays = analyze_full(arch, params, hp)
    return arch, (pa, pb), (ca, cb), scalars, arrays


# --------------------------------------------------------------------------------------------- #
# Reference values (SPEC §7)


def test_model_a_circles(models_ab):
    _, _, _, s, a = models_ab
    np.testing.assert_array_equal(a["pc_frequency"][0], [17, 17, 3, 3, 15, 15, 25, 25, 6, 6, 29, 29])
    np.testing.assert_array_equal(a["circle_frequency"][0], [17, 3, 15, 25, 6, 29])
    np.testing.assert_array_equal(a["circle_delta"][0][:3], [7, 20, 4])
    np.testing.assert_array_equal(a["circle_components"][0], [2] * 6)
    # the circles on PCs 7-12 accompany those on PCs 1-6 (k' = 2k mod ±p)
    np.testing.assert_array_equal(a["circle_accompanies"][0], [0, 0, 0, 17, 3, 15])
    assert s["n_circles"][0] == 6
    assert np.all(a["pc_power"][0] > 0.98)


def test_model_b_circles(models_ab):
    _, _, _, s, a = models_ab
    assert s["n_circles"][1] == 4
    np.testing.assert_array_equal(a["circle_frequency"][1][:4], [13, 16, 21, 17])
    assert np.all(a["circle_frequency"][1][4:] == 0)
    assert np.all(np.isnan(a["circle_accuracy"][1][4:]))


def test_model_a_isolate_k17_fve(models_ab):
    _, _, _, _, a = models_ab
    assert a["circle_frequency"][0][0] == 17
    assert a["circle_fve_clock"][0][0] == pytest.approx(0.7541, abs=1e-3)
    assert a["circle_fve_pizza"][0][0] == pytest.approx(0.9918, abs=1e-3)
    # Model A's main circles are all Pizza-like; Model B's first circle is Clock-like
    assert np.all(a["circle_fve_pizza"][0][:3] > a["circle_fve_clock"][0][:3])
    assert a["circle_fve_clock"][1][0] > a["circle_fve_pizza"][1][0]


@pytest.mark.parametrize(("keep", "expected"), [(range(0, 6), 0.9966), (range(6, 12), 0.1672)])
def test_model_a_isolation_accuracy(models_ab, keep, expected):
    arch, (pa, _), (ca, _), _, _ = models_ab
    mask = np.zeros(12, bool)
    mask[list(keep)] = True
    fn = jax.jit(lambda prm, m: isolated_logits(arch, prm, ca["attn_coeff"], attn_scale(arch.d_model), m))
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(fn(pa, jnp.asarray(mask)))
    _, labels = all_pairs(arch.task)
    assert np.mean(logits.argmax(-1) == labels) == pytest.approx(expected, abs=5e-4)


def test_isolation_against_numpy(models_ab):
    """Circle isolation = inverse PCA with the mean added back, checked in float64 NumPy."""
    arch, (pa, _), _, _, _ = models_ab
    table = np.asarray(pa["params"]["W_E"][:, : arch.p].T, np.float64)
    keep = np.zeros(12, bool)
    keep[[0, 1, 6, 7]] = True
    got = np.asarray(circles.isolate(metrics.pca(jnp.asarray(table, jnp.float32)), jnp.asarray(keep)))
    mu = table.mean(0)
    u, s, vt = np.linalg.svd(table - mu, full_matrices=False)
    want = (u[:, keep[: len(s)].nonzero()[0]] * s[keep.nonzero()[0]]) @ vt[keep.nonzero()[0]] + mu
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_models_ab_classification(models_ab):
    _, _, _, s, a = models_ab
    assert list(s["algorithm"]) == ["pizza", "clock"]
    assert s["circles_accuracy"][0] == 1.0 and s["circles_accuracy"][1] == 1.0
    # per-difference accuracy averages to the overall accuracy
    np.testing.assert_allclose(
        a["circle_accuracy_by_difference"][0].mean(-1), a["circle_accuracy"][0], atol=1e-6
    )


# --------------------------------------------------------------------------------------------- #
# Analytic constructions


def _circle_table(p, ks, radii, e=16, seed=0):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(e, e)))
    t = np.arange(p)
    table = np.zeros((p, e)) + rng.normal(size=e)  # a mean offset
    for i, (k, r) in enumerate(zip(ks, radii, strict=True)):
        ang = 2 * np.pi * k * t / p
        table += r * (np.outer(np.cos(ang), basis[2 * i]) + np.outer(np.sin(ang), basis[2 * i + 1]))
    return jnp.asarray(table, jnp.float32)


def test_exact_circles_key_frequencies():
    p = 13
    table = _circle_table(p, ks=[5, 11], radii=[2.0, 1.0])  # 11 -> min(11, 2) = 2
    dec = metrics.pca(table)
    f = circles.key_frequencies(dec, p, 6)
    np.testing.assert_array_equal(f["frequency"][:4], [5, 5, 2, 2])
    np.testing.assert_allclose(f["power"][:4], 1.0, atol=1e-5)
    inv = [pow(5, -1, p), pow(2, -1, p)]  # 8, 7 -> min(δ, p − δ) = 5, 6
    np.testing.assert_array_equal(
        f["delta"][:4], [min(inv[0], p - inv[0])] * 2 + [min(inv[1], p - inv[1])] * 2
    )
    np.testing.assert_allclose(f["variance"][:4], [0.4, 0.4, 0.1, 0.1], atol=1e-5)
    # components 5, 6 carry no variance: no frequency
    np.testing.assert_array_equal(f["frequency"][4:], 0)
    k, members, n = circles.group_circles(f["frequency"], f["power"], 3)
    assert int(n) == 2
    np.testing.assert_array_equal(k, [5, 2, 0])
    np.testing.assert_array_equal(members[0], [1, 1, 0, 0, 0, 0])


def test_key_frequency_invariant_to_sign_and_rotation():
    p = 13
    dec = metrics.pca(_circle_table(p, ks=[4, 6], radii=[1.0, 0.9]))
    base = circles.key_frequencies(dec, p, 4)
    th = 0.7
    rot = np.eye(dec.scores.shape[1])
    rot[:2, :2] = [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]
    rot[2, 2] = -1.0
    turned = dec._replace(scores=dec.scores @ jnp.asarray(rot, jnp.float32))
    other = circles.key_frequencies(turned, p, 4)
    np.testing.assert_array_equal(other["frequency"], base["frequency"])
    np.testing.assert_allclose(other["power"], base["power"], atol=1e-5)


def test_group_circles_requires_power_and_pairs():
    freq = jnp.asarray([7, 7, 3, 9, 3, 9, 5, 2], jnp.int32)
    power = jnp.asarray([1, 1, 0.99, 0.95, 0.99, 0.5, 1, 1], jnp.float32)
    k, members, n = circles.group_circles(freq, power, 4, min_power=0.9)
    assert int(n) == 2  # 9 has one strong component only; 5 and 2 are single
    np.testing.assert_array_equal(k, [7, 3, 0, 0])
    np.testing.assert_array_equal(members[1], [0, 0, 1, 0, 1, 0, 0, 0])


def test_accompanied_frequency():
    k = jnp.asarray([17, 3, 15, 25, 6, 29], jnp.int32)
    np.testing.assert_array_equal(circles.accompanied_frequency(k, 59), [0, 0, 0, 17, 3, 15])


def _fve64(o, f):
    z = lambda x: (x - x.mean()) / x.std()
    return 1 - np.var(z(o) - z(f)) / np.var(z(o))


@pytest.mark.parametrize("k", [1, 4])
def test_fve_of_hand_built_logits(k):
    p = 11
    clock = np.asarray(circles.clock_logits(p, k), np.float64)
    pizza = np.asarray(circles.pizza_logits(p, k), np.float64)
    acc = np.asarray(circles.accompanying_logits(p, k), np.float64)
    a, b, c = np.meshgrid(np.arange(p), np.arange(p), np.arange(p), indexing="ij")
    w = 2 * np.pi * k / p
    np.testing.assert_allclose(clock, np.cos(w * (a + b - c)), atol=1e-5)
    np.testing.assert_allclose(pizza, np.abs(np.cos(w * (a - b) / 2)) * np.cos(w * (a + b - c)), atol=1e-5)
    np.testing.assert_allclose(acc, -np.cos(w * (a - b)) * np.cos(w * (a + b - c)), atol=1e-5)
    for form in (clock, pizza, acc):
        observed = 3.0 * form + 1.5  # FVE is invariant to affine rescaling of the logits
        assert float(circles.logit_fve(jnp.asarray(observed), jnp.asarray(form))) == pytest.approx(
            1.0, abs=1e-5
        )
    # the wrong formula explains less, and FVE = 2ρ − 1 (not ρ²)
    got = float(circles.logit_fve(jnp.asarray(pizza), jnp.asarray(clock)))
    rho = np.corrcoef(pizza.ravel(), clock.ravel())[0, 1]
    assert got == pytest.approx(_fve64(pizza, clock), abs=1e-5)
    assert got == pytest.approx(2 * rho - 1, abs=1e-5)
    assert got < 0.99


def test_accuracy_by_difference():
    p = 5
    _, labels = all_pairs(Task(p))
    a, b = np.divmod(np.arange(p * p), p)
    logits = np.zeros((p * p, p), np.float32)
    pred = np.where((a - b) % p == 2, (labels + 1) % p, labels)  # wrong exactly when a − b ≡ 2
    logits[np.arange(p * p), pred] = 1.0
    got = np.asarray(circles.accuracy_by_difference(jnp.asarray(logits), jnp.asarray(labels), p))
    np.testing.assert_array_equal(got, [1, 1, 0, 1, 1])


def test_classify_thresholds():
    circ = np.asarray([0.99, 0.999, 0.999, 0.999, 0.999, 0.999])
    gs = np.asarray([0.99, 0.99, 0.3, 0.99, 0.3, np.nan])
    di = np.asarray([0.1, 0.1, 0.9, 0.9, 0.1, 0.1])
    codes = classify.algorithm(circ, gs, di)
    assert [ALGORITHMS[c] for c in codes] == ["non-circular", "pizza", "clock", "mixed", "mixed", "mixed"]
    strict = {"gradient_symmetricity_threshold": 0.991, "circular_threshold": 0.985}
    names = classify.algorithm_names(classify.algorithm(circ, gs, di, **strict))
    assert list(names[:2]) == ["mixed", "mixed"]


def test_algorithm_is_built_from_the_labels():
    """Pizza iff both labels are 1, Clock iff both are 0, for circular networks; the labels are
    the ones the phase diagrams fit (one classifier)."""
    rng = np.random.default_rng(0)
    runs = {
        "circularity": rng.choice([0.5, 0.999, np.nan], 200),
        "gradient_symmetricity": rng.choice([0.1, 0.99, np.nan], 200),
        "distance_irrelevance": rng.choice([0.1, 0.9, np.nan], 200),
    }
    lab = classify.labels(runs)
    codes = classify.algorithm(
        runs["circularity"], runs["gradient_symmetricity"], runs["distance_irrelevance"]
    )
    circ = classify.circular_mask(runs["circularity"])
    s, d = lab["symmetric"], lab["distance_dependent"]
    want = np.where(~circ, 0, np.where((s == 1) & (d == 1), 1, np.where((s == 0) & (d == 0), 2, 3)))
    np.testing.assert_array_equal(codes, want)
    assert set(codes) == {0, 1, 2, 3}


def test_thresholds_read_from_analysis_options():
    th = classify.thresholds({"gradient_symmetricity_threshold": 0.5, "n_triples": 7})
    assert th == {**THRESHOLDS, "gradient_symmetricity_threshold": 0.5}
    with pytest.raises(ValueError, match="circular_threshold"):
        classify.thresholds({"circular_threshold": float("nan")})


def test_circuit_options_validation():
    with pytest.raises(ValueError, match="di_metric"):
        CircuitOptions(di_metric="nope")
    with pytest.raises(ValueError, match="n_components"):
        CircuitOptions(n_components=1)
