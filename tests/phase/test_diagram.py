"""Phase diagrams: binning, NaN-skipping statistics, classification and the logistic α* fit."""

import os

import numpy as np
import pytest
from scipy.optimize import minimize

from phasespace.analysis import classify
from phasespace.defaults import CIRCULAR_THRESHOLD
from phasespace.io.checkpoint import resume_fields
from phasespace.phase import diagram
from phasespace.spec import SpecError, expand, parse_spec


def _logistic_data(n, a_star, k, seed=0):
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(0, 1, n)
    p = 1 / (1 + np.exp(k * (alpha - a_star)))  # label 1 (Pizza side) below α*
    return alpha, (rng.uniform(0, 1, n) < p).astype(float)


def test_fit_transition_recovers_known_boundary():
    alpha, y = _logistic_data(20000, 0.62, 25.0)
    t = diagram.fit_transition(alpha, y)
    assert t.status == "fitted" and t.n == 20000 and t.n_skipped == 0 and t.p_value < 1e-100
    assert t.alpha_star == pytest.approx(0.62, abs=0.01)
    assert t.slope == pytest.approx(-25.0, rel=0.1)
    assert 0 < t.se < 0.01
    # the maximum-likelihood coefficients, checked against a generic optimiser in float64
    nll = lambda w: np.sum(np.logaddexp(0, w[0] + w[1] * alpha) - y * (w[0] + w[1] * alpha))
    ref = minimize(nll, [0.0, 0.0], method="BFGS", options={"gtol": 1e-8}).x
    np.testing.assert_allclose([t.intercept, t.slope], ref, rtol=1e-4)


def test_fit_transition_standard_error_is_calibrated():
    """Across 200 independent samples the spread of α* matches the reported standard error."""
    est, ses = [], []
    for s in range(200):
        alpha, y = _logistic_data(400, 0.4, 15.0, seed=s)
        t = diagram.fit_transition(alpha, y)
        est.append(t.alpha_star)
        ses.append(t.se)
    assert np.mean(est) == pytest.approx(0.4, abs=0.005)
    assert np.std(est) == pytest.approx(np.mean(ses), rel=0.2)


def test_fit_transition_edge_cases():
    a = np.asarray([0.1, 0.2, 0.3, 0.7, 0.8, np.nan])
    y = np.asarray([1, 1, 1, 0, 0, 1.0])
    t = diagram.fit_transition(a, y)  # separable: the MLE does not exist
    assert t.status == "separable" and t.alpha_star == pytest.approx(0.5) and t.n == 5 and t.n_skipped == 1
    t = diagram.fit_transition(a, np.asarray([0, 0, 0, 1, 1, np.nan]))
    assert t.status == "separable" and t.alpha_star == pytest.approx(0.5)
    t = diagram.fit_transition(a[:5], np.ones(5))
    assert t.status == "one class" and np.isnan(t.alpha_star)
    t = diagram.fit_transition([0.3], [1.0])
    assert t.status == "too few" and np.isnan(t.alpha_star)
    t = diagram.fit_transition([], [])
    assert t.status == "too few" and t.n == 0


def test_binned_stats_nan_skipping_against_loops():
    rng = np.random.default_rng(1)
    v = rng.normal(size=500)
    v[rng.uniform(size=500) < 0.2] = np.nan
    i = rng.integers(-1, 3, 500)
    j = rng.integers(0, 4, 500)
    st = diagram.binned_stats(v, (i, j), (3, 4))
    for a in range(3):
        for b in range(4):
            sel = (i == a) & (j == b)
            fin = v[sel][np.isfinite(v[sel])]
            assert st["count"][a, b] == len(fin) and st["nan"][a, b] == sel.sum() - len(fin)
            assert st["mean"][a, b] == pytest.approx(fin.mean(), rel=1e-12)
            assert st["std"][a, b] == pytest.approx(fin.std(), rel=1e-10)


def test_bin_edges_and_index():
    w = np.asarray([32, 63, 64, 200, 511])
    edges, coords = diagram.bin_edges(w, "octave", "d_model")
    np.testing.assert_array_equal(edges, [32, 64, 128, 256, 512])
    np.testing.assert_allclose(coords, np.sqrt(edges[1:] * edges[:-1]))
    np.testing.assert_array_equal(diagram.bin_index(w, edges), [0, 0, 1, 2, 3])
    edges, coords = diagram.bin_edges(np.asarray([0.0, 0.25, 1.0, 0.25]), "auto", "attention_rate")
    np.testing.assert_array_equal(coords, [0.0, 0.25, 1.0])
    np.testing.assert_array_equal(diagram.bin_index([0.0, 0.25, 1.0, 2.0, np.nan], edges), [0, 1, 2, -1, -1])
    edges, _ = diagram.bin_edges(np.zeros(3), 10, "attention_rate")
    np.testing.assert_array_equal(diagram.bin_index([0.0, 0.05, 0.1, 0.95, 1.0], edges), [0, 0, 1, 9, 9])


def test_classify_thresholds_are_parameters():
    runs = {
        "gradient_symmetricity": np.asarray([0.99, 0.97, np.nan]),
        "distance_irrelevance_largest_wrong": np.asarray([0.3, 0.7, 0.5]),
    }
    lab = classify.labels(runs)
    np.testing.assert_array_equal(lab["symmetric"], [1.0, 0.0, np.nan])
    np.testing.assert_array_equal(lab["distance_dependent_largest_wrong"], [1.0, 0.0, 1.0])
    assert "distance_dependent" not in lab
    lab = classify.labels(runs, gradient_symmetricity_threshold=0.95, distance_irrelevance_threshold=0.4)
    np.testing.assert_array_equal(lab["symmetric"], [1.0, 1.0, np.nan])
    np.testing.assert_array_equal(lab["distance_dependent_largest_wrong"], [1.0, 0.0, 0.0])


def test_phase_arrays_two_width_bins_recover_their_boundaries():
    a1, y1 = _logistic_data(3000, 0.35, 30.0, seed=2)
    a2, y2 = _logistic_data(3000, 0.8, 30.0, seed=3)
    rng = np.random.default_rng(4)
    width = np.concatenate([rng.integers(32, 64, 3000), rng.integers(256, 512, 3000)])
    alpha = np.concatenate([a1, a2])
    y = np.concatenate([y1, y2])
    circ = np.where(rng.uniform(size=6000) < 0.3, 0.999, 0.5)
    circ[:10] = np.nan
    runs = {
        "d_model": width,
        "attention_rate": alpha,
        "gradient_symmetricity": np.where(y == 1, 0.99, 0.5),
        "distance_irrelevance_largest_wrong": np.where(y == 1, 0.3, 0.9),
        "circularity": circ,
    }
    arr = diagram.phase_arrays(runs, {"width_bins": "octave"})
    np.testing.assert_array_equal(arr["edges__d_model_bin"], [32, 64, 128, 256, 512])
    # no family columns in these rows: one family, "all"
    assert list(arr["coord__family"]) == ["all"] and list(arr["family_axes"]) == []
    a_star = arr["transition__all__symmetric__alpha_star"][0]
    assert a_star[0] == pytest.approx(0.35, abs=0.02) and a_star[3] == pytest.approx(0.8, abs=0.02)
    status = arr["transition__all__symmetric__status"][0]
    assert np.all(np.isnan(a_star[1:3])) and list(status) == ["fitted", "too few", "too few", "fitted"]
    np.testing.assert_array_equal(arr["transition__all__symmetric__n"], [[3000, 0, 0, 3000]])
    n_circ = arr["transition__circular__symmetric__n"][0]
    assert n_circ[0] + n_circ[3] == int(np.sum(circ >= CIRCULAR_THRESHOLD))
    # binned arrays: dims, counts and the label fraction
    assert list(arr["dims__binned"]) == ["family", "d_model_bin", "attention_rate_bin"]
    cnt = arr["binned__all__symmetric__count"]
    assert cnt.shape == (1, 4, 10) and cnt.sum() == 6000
    frac = arr["binned__all__symmetric__mean"][0]
    assert frac[0, 0] > 0.9 and frac[0, 9] < 0.1 and frac[3, 6] > 0.5
    assert arr["binned__all__circular__nan"].sum() == 10
    _, dims, coords = diagram.named(arr, "transition__all__symmetric__alpha_star")
    assert dims == ["family", "d_model_bin"] and len(coords["d_model_bin"]) == 4
    text = diagram.format_transitions(arr)
    assert "32–63" in text and "256–511" in text


def test_spec_phase_and_bucket_options_validated():
    base = {"axes": {"p": 11, "d_model": 8}}
    spec = parse_spec({**base, "phase": {"alpha_bins": [0, 0.5, 1]}, "buckets": {"max_buckets": 2}})
    assert spec.phase["alpha_bins"] == [0, 0.5, 1] and spec.buckets["max_buckets"] == 2
    fields = resume_fields(spec)
    assert not any(k.startswith("phase.") for k in fields) and "buckets.max_buckets" in fields
    for bad, field in [
        ({"phase": {"alpha_bins": "octave"}}, "phase.alpha_bins"),
        ({"phase": {"width_bins": [64, 32]}}, "phase.width_bins"),
        ({"analysis": {"gradient_symmetricity_threshold": "x"}}, "analysis.gradient_symmetricity_threshold"),
        ({"phase": {"alpha_bin": 3}}, "alpha_bins"),
        ({"buckets": {"max_buckets": 0}}, "buckets.max_buckets"),
        ({"buckets": {"max_waste": 1.5}}, "buckets.max_waste"),
    ]:
        with pytest.raises(SpecError, match=field):
            parse_spec({**base, **bad})


def test_spec_axes_paper_distributions():
    spec = parse_spec(
        {
            "axes": {
                "p": 59,
                "d_model": {"dist": "log2uniform", "low": 5, "high": 9},
                "attention_rate": {"dist": "uniform", "low": 0.0, "high": 1.0},
                "seed": {"dist": "range", "low": 0, "high": 300},
                "lr": {"dist": "log2uniform", "low": -11, "high": -9},
                "weight_decay": [1.0, 2.0],
                "train_fraction": {"dist": "uniform", "low": 0.5, "high": 0.9},
                "act": ["relu", "gelu"],
            },
            "sampling": {"n": 1},
        }
    )
    nets = expand(spec)
    assert len(nets) == 300 * 2 * 2
    w = np.asarray([n.values["d_model"] for n in nets])
    assert w.min() >= 32 and w.max() <= 511 and np.issubdtype(w.dtype, np.integer)
    # log-uniform: about a quarter of the networks per octave
    counts = np.histogram(w, [32, 64, 128, 256, 512])[0]
    assert np.all(np.abs(counts / len(w) - 0.25) < 0.05)
    lr = np.asarray([n.values["lr"] for n in nets])
    assert lr.min() >= 2**-11 and lr.max() <= 2**-9
    assert {n.values["act"] for n in nets} == {"relu", "gelu"}
    with pytest.raises(SpecError, match=r"axes.attention_rate.dist='range'"):
        parse_spec({"axes": {"attention_rate": {"dist": "range", "low": 0, "high": 2}}})
    with pytest.raises(SpecError, match=r"axes.n_layers"):
        parse_spec({"axes": {"n_layers": {"dist": "randint", "low": 1, "high": 3}}, "sampling": {"n": 1}})


SAMPLED = """
name = "widths"
[axes]
p = 7
d_model = {dist = "log2uniform", low = 2, high = 3.6}
attention_rate = {dist = "uniform", low = 0.0, high = 1.0}
seed = {dist = "range", low = 0, high = 8}
[sampling]
n = 1
[train]
steps = 30
chunk_steps = 30
log_every = 10
[buckets]
max_buckets = 2
max_waste = 0.0
[phase]
width_bins = [4, 8, 16]
"""


def test_sampled_width_sweep_writes_phase_arrays_padding_and_figures(tmp_path, capsys):
    from phasespace.cli import main
    from phasespace.io.store import load_sweep

    spec = tmp_path / "widths.toml"
    spec.write_text(SAMPLED)
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "padding waste" in text and "transition attention rate" in text and "4–7" in text
    r = load_sweep(str(out))
    w = r.runs["d_model"]
    assert len(w) == 8 and w.min() >= 4 and w.max() <= 12 and len(np.unique(w)) > 2
    pad = r.environment["padding"]
    assert len(pad["buckets"]) == 2 and 0 < pad["waste"] < 1
    assert sorted(r.runs["bucket"]) == sorted(b["key"] for b in pad["buckets"] for _ in range(b["networks"]))
    arr, dims, coords = r.metric("binned__all__gradient_symmetricity__mean")
    assert dims == ["family", "d_model_bin", "attention_rate_bin"] and arr.shape == (1, 2, 10)
    cnt, _, _ = r.metric("binned__all__gradient_symmetricity__count")
    nan, _, _ = r.metric("binned__all__gradient_symmetricity__nan")
    assert cnt.sum() + nan.sum() == 8
    np.testing.assert_array_equal(coords["d_model_bin"], np.sqrt([32.0, 128.0]))
    a_star, dims_t, _ = r.metric("transition__all__symmetric__alpha_star")
    assert dims_t == ["family", "d_model_bin"] and a_star.shape == (1, 2)
    # every metric is finite: the padded networks were analysed at their true widths
    for k in ("gradient_symmetricity", "distance_irrelevance", "circularity", "param_norm"):
        assert np.all(np.isfinite(r.runs[k])), k
    figs = sorted(os.listdir(out / "figures"))
    assert "phase_width_all.png" in figs and "alpha_panels_d4-7_all.png" in figs


@pytest.mark.parametrize(
    ("table", "old", "new"),
    [
        ("phase", "symmetric_threshold", "analysis.gradient_symmetricity_threshold"),
        ("phase", "irrelevance_threshold", "analysis.distance_irrelevance_threshold"),
        ("phase", "circular_threshold", "analysis.circular_threshold"),
        ("analysis", "gs_threshold", "analysis.gradient_symmetricity_threshold"),
        ("analysis", "di_threshold", "analysis.distance_irrelevance_threshold"),
    ],
)
def test_old_threshold_keys_are_refused_naming_the_new_key(table, old, new):
    with pytest.raises(SpecError, match=rf"^{table}\.{old}: moved to {new}$"):
        parse_spec({"axes": {"p": 11, "d_model": 8}, table: {old: 0.5}})


def test_thresholds_are_analysis_options_read_by_the_phase_diagram_and_free_on_resume():
    base = {"axes": {"p": 11, "d_model": 8}}
    spec = parse_spec({**base, "analysis": {"gradient_symmetricity_threshold": 0.5}})
    assert spec.analysis["gradient_symmetricity_threshold"] == 0.5
    assert "circular_threshold" not in spec.phase and "gradient_symmetricity_threshold" not in spec.phase
    assert resume_fields(spec) == resume_fields(parse_spec(base))  # thresholds do not change training
    runs = {
        "d_model": np.full(4, 8.0),
        "attention_rate": np.asarray([0.0, 0.0, 1.0, 1.0]),
        "circularity": np.ones(4),
        "gradient_symmetricity": np.asarray([0.9, 0.9, 0.3, 0.3]),
    }
    frac = "binned__all__symmetric__mean"
    np.testing.assert_array_equal(diagram.phase_arrays(runs, spec.phase)[frac], [[[0.0, 0.0]]])
    np.testing.assert_array_equal(
        diagram.phase_arrays(runs, spec.phase, thresholds=spec.analysis)[frac], [[[1.0, 0.0]]]
    )
    with pytest.raises(ValueError, match=r"phase\.symmetric_threshold: moved to"):
        diagram.phase_arrays(runs, {"symmetric_threshold": 0.5})
