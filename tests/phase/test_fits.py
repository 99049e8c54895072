"""Transition fits that cannot be made are named statuses; families are not pooled; half-open bins
that hold grid values in their own bin; robust figures (issue 10)."""

import os
import warnings

import numpy as np
import pytest

from phasespace.phase import compare, diagram, figures
from phasespace.spec import SpecError, expand, load_spec, parse_spec

CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cases")


def _case(name):
    path = os.path.join(CASES, name)
    if not os.path.exists(path):
        pytest.fail(f"case spec not found at {path} (set PHASESPACE_CASES)")
    return path


# --------------------------------------------------------------------------------------------- #
# fit_transition


def test_balanced_labels_are_no_trend_not_an_error():
    """c19: a 2-point α grid with balanced labels: the MLE slope is exactly 0."""
    t = diagram.fit_transition([0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0])
    assert t.status == "no trend" and np.isnan(t.alpha_star) and np.isnan(t.se)
    assert t.slope == 0.0 and t.p_value == pytest.approx(1.0) and (t.n, t.n_positive) == (4, 2)
    # a weak slope that is not significant is "no trend" too; the coefficients are reported
    rng = np.random.default_rng(0)
    alpha = rng.uniform(0, 1, 60)
    y = (rng.uniform(size=60) < 0.5).astype(float)
    t = diagram.fit_transition(alpha, y)
    assert t.status == "no trend" and t.p_value >= diagram.TREND_LEVEL and np.isfinite(t.slope)
    assert np.isnan(t.alpha_star)
    # the same labels with a strict level of 1.0 are fitted (the level is the only difference)
    t1 = diagram.fit_transition(alpha, y, level=1.0)
    assert t1.status == "fitted" and t1.alpha_star == pytest.approx(-t.intercept / t.slope)


def test_single_alpha_value_is_not_separable():
    t = diagram.fit_transition([0.3, 0.3, 0.3, 0.3, np.nan], [1.0, 0.0, 1.0, 0.0, 1.0])
    assert t.status == "one α value" and np.isnan(t.alpha_star) and t.n == 4 and t.n_skipped == 1
    t = diagram.fit_transition([0.3, 0.3], [1.0, 0.0])
    assert t.status == "one α value" and np.isnan(t.alpha_star)


def test_separable_labels_give_the_midpoint_of_the_gap():
    t = diagram.fit_transition([0.1, 0.2, 0.7, 0.8], [1.0, 1.0, 0.0, 0.0])
    assert t.status == "separable" and t.alpha_star == pytest.approx(0.45) and np.isnan(t.se)
    t = diagram.fit_transition([0.1, 0.2, 0.7, 0.8], [0.0, 0.0, 1.0, 1.0])  # the reverse direction
    assert t.status == "separable" and t.alpha_star == pytest.approx(0.45)
    # quasi-complete separation (the classes share one α): the limit of the boundary is that α
    t = diagram.fit_transition([0.0, 0.5, 0.5, 1.0], [1.0, 1.0, 0.0, 0.0])
    assert t.status == "separable" and t.alpha_star == pytest.approx(0.5)


def test_one_class_and_too_few():
    assert diagram.fit_transition([0.1, 0.5, 0.9], [1.0, 1.0, 1.0]).status == "one class"
    assert diagram.fit_transition([0.1, 0.5, 0.9], [0.0, 0.0, np.nan]).status == "one class"
    for a, y in (([], []), ([0.4], [1.0]), ([np.nan, 0.2], [1.0, np.nan])):
        t = diagram.fit_transition(a, y)
        assert t.status == "too few" and np.isnan(t.alpha_star)
    assert set(diagram.STATUS) == {
        "fitted",
        "no trend",
        "separable",
        "one class",
        "one α value",
        "too few",
        "failed",
    }


def test_synthetic_boundary_recovered_within_its_standard_error():
    rng = np.random.default_rng(7)
    n, a_true, k = 3000, 0.55, 12.0
    alpha = rng.uniform(0, 1, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(k * (alpha - a_true)))).astype(float)
    t = diagram.fit_transition(alpha, y)
    assert t.status == "fitted" and t.p_value < 1e-10
    assert abs(t.alpha_star - a_true) < 3 * t.se and 0 < t.se < 0.02
    # the delta-method standard error, recomputed from the Fisher information at the estimate
    X = np.stack([np.ones(n), alpha], axis=1)
    p = 1 / (1 + np.exp(-(X @ [t.intercept, t.slope])))
    cov = np.linalg.inv(X.T @ (X * (p * (1 - p))[:, None]))
    grad = np.asarray([-1 / t.slope, t.intercept / t.slope**2])
    assert t.se == pytest.approx(np.sqrt(grad @ cov @ grad), rel=1e-6)
    assert t.alpha_star == pytest.approx(-t.intercept / t.slope, rel=1e-12)


def test_failed_fit_is_a_status_with_a_warning(monkeypatch):
    import statsmodels.discrete.discrete_model as dm

    def boom(*args, **kwargs):
        raise np.linalg.LinAlgError("singular")

    monkeypatch.setattr(dm.Logit, "fit", boom)
    with pytest.warns(RuntimeWarning, match="transition fit failed"):
        t = diagram.fit_transition([0.0, 0.2, 0.4, 0.6], [1.0, 0.0, 1.0, 0.0])
    assert t.status == "failed" and np.isnan(t.alpha_star)


# --------------------------------------------------------------------------------------------- #
# bins


def test_equal_bins_hold_grid_values_in_their_own_bin():
    """Rule: bin i holds edges[i] − tol ≤ α < edges[i+1] − tol (tol = 1e-9 · span), the last bin
    closed. With 10 bins, α = 0, 0.1, …, 1: bins 0…8 hold one value each, bin 9 holds 0.9 and 1.0."""
    edges, _ = diagram.bin_edges(np.zeros(1), 10, "attention_rate")
    np.testing.assert_array_equal(edges, [k / 10 for k in range(11)])  # 0.3 is exactly the float 0.3
    expected = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]
    grids = {
        "literals": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        "linspace": np.linspace(0, 1, 11),  # 0.30000000000000004, 0.6000000000000001, …
        "k * 0.1": [k * 0.1 for k in range(11)],
        "cumulative": np.cumsum([0.0] + [0.1] * 10),  # 0.7999999999999999, 0.9999999999999999
    }
    for name, alpha in grids.items():
        np.testing.assert_array_equal(diagram.bin_index(alpha, edges), expected, err_msg=name)
        assert np.bincount(diagram.bin_index(alpha, edges), minlength=10).tolist() == [1] * 9 + [2]
    # a hair below an edge counts as on it; outside [0, 1] (beyond the tolerance) and NaN: −1
    near = [0.7 - 0.4, 0.3 - 1e-12, 0.3 - 1e-6, -1e-12, -1e-6, 1 + 1e-12, 1 + 1e-6, np.nan]
    np.testing.assert_array_equal(diagram.bin_index(near, edges), [3, 3, 2, 0, -1, 9, -1, -1])
    # explicit edges follow the same rule
    e = np.asarray([0.0, 0.3, 0.6, 1.0])
    np.testing.assert_array_equal(diagram.bin_index([0.0, 0.3, 0.6, 0.59, 1.0], e), [0, 1, 2, 1, 2])


def test_phase_arrays_count_one_network_per_alpha_bin():
    alpha = np.asarray([k / 10 for k in range(11)])  # 0.3 etc. as written in a spec
    runs = {
        "d_model": np.full(11, 32.0),
        "attention_rate": alpha,
        "gradient_symmetricity": np.where(alpha < 0.45, 0.99, 0.5),
        "circularity": np.ones(11),
    }
    arr = diagram.phase_arrays(runs, {"alpha_bins": 10})
    np.testing.assert_array_equal(arr["binned__all__gradient_symmetricity__count"][0, 0], [1] * 9 + [2])
    np.testing.assert_array_equal(arr["edges__attention_rate_bin"], np.arange(11) / 10)


def _table_rows(alphas):
    rows = []
    for i, a in enumerate(alphas):
        rows.append(
            {
                "index": i,
                "attention_rate": a,
                "d_model": 128,
                "n_layers": 1,
                "act": "relu",
                "diff_vocab": False,
                "eqn_sign": False,
                "gradient_symmetricity": 0.99 if a < 0.5 else 0.5,
                "distance_irrelevance_largest_wrong": 0.3 if a < 0.5 else 0.9,
                "circularity": 0.999,
            }
        )
    return rows


def test_compare_puts_alpha_0_6_in_the_0_6_row(tmp_path):
    from phasespace.io import store

    alphas = [0.3] * 2 + [0.6] * 3 + [0.7] * 4
    rows = _table_rows(alphas)
    store.write_csv(str(tmp_path / "runs.csv"), list(rows[0]), rows)
    t = compare.load_table(str(tmp_path))
    c = compare.compare(t, t)
    cnt = c.arrays[0]["binned__all__gradient_symmetricity__count"][0, 0]
    assert cnt.tolist() == [0, 0, 0, 2, 0, 0, 3, 4, 0, 0]
    lines = compare.format_comparison(c).splitlines()
    row = {ln.split()[0]: ln.split()[1:3] for ln in lines if ln.strip()[:4] in ("0.30", "0.60", "0.70")}
    assert row == {"0.30–0.40": ["2", "2"], "0.60–0.70": ["3", "3"], "0.70–0.80": ["4", "4"]}
    assert not any(ln.strip().startswith(("0.50–0.60", "0.20–0.30")) for ln in lines)


# --------------------------------------------------------------------------------------------- #
# families


def _family_rows(rng, n, a_star, model="transformer", p=23):
    alpha = rng.uniform(0, 1, n) if model == "transformer" else np.full(n, np.nan)
    y = rng.uniform(size=n) < 1 / (1 + np.exp(30 * (alpha - a_star)))
    return {
        "model": np.asarray([model] * n),
        "p": np.full(n, p),
        "n_layers": np.ones(n, np.int64),
        "act": np.asarray(["relu"] * n),
        "diff_vocab": np.zeros(n, bool),
        "eqn_sign": np.zeros(n, bool),
        "d_model": np.full(n, 64.0),
        "attention_rate": alpha,
        "gradient_symmetricity": np.where(y, 0.99, 0.5),
        "circularity": np.full(n, 0.999),
    }


def _concat(*parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_phase_arrays_do_not_pool_families():
    rng = np.random.default_rng(3)
    runs = _concat(
        _family_rows(rng, 2000, 0.7, p=31),
        _family_rows(rng, 2000, 0.3, p=23),
        _family_rows(rng, 50, 0.5, model="mlp_alpha", p=23),
    )
    arr = diagram.phase_arrays(runs, {"alpha_bins": 10})
    labels = list(arr["coord__family"])
    assert labels == [
        "model=mlp_alpha p=23 n_layers=1 act=relu diff_vocab=false eqn_sign=false",
        "model=transformer p=23 n_layers=1 act=relu diff_vocab=false eqn_sign=false",
        "model=transformer p=31 n_layers=1 act=relu diff_vocab=false eqn_sign=false",
    ]
    assert list(arr["family__model"]) == ["mlp_alpha", "transformer", "transformer"]
    assert list(arr["family__p"]) == [23, 23, 31] and list(arr["family__networks"]) == [50, 2000, 2000]
    a_star = arr["transition__all__symmetric__alpha_star"]
    assert a_star.shape == (3, 1) and list(arr["dims__transition"]) == ["family", "d_model_bin"]
    assert a_star[1, 0] == pytest.approx(0.3, abs=0.02) and a_star[2, 0] == pytest.approx(0.7, abs=0.02)
    pooled = diagram.phase_arrays(runs, {"alpha_bins": 10}, group_by=())
    assert pooled["transition__all__symmetric__alpha_star"][0, 0] == pytest.approx(0.5, abs=0.05)
    # the MLP family has no attention rate: in no α bin, skipped by the fit
    assert arr["transition__all__symmetric__status"][0, 0] == "too few"
    assert arr["transition__all__symmetric__n_skipped"][0, 0] == 50
    cnt = arr["binned__all__gradient_symmetricity__count"]
    assert cnt.shape == (3, 1, 10) and cnt[0].sum() == 0 and cnt[1].sum() == cnt[2].sum() == 2000
    assert diagram.families_without_alpha(arr) == [0]
    from phasespace.report.page import transition_section

    html = transition_section(arr)  # the report, like the printout, names the MLP family once
    assert html.count("<h4>family") == 2 and "<li>family model=mlp_alpha p=23" in html
    text = diagram.format_transitions(arr)
    assert text.count("family model=") == 3 and "family model=transformer p=23" in text
    # the MLP family, with no network in any cell, is named once, not tabled
    no_alpha = text.split("no α* (no network in any width bin")[1].splitlines()
    assert no_alpha[1] == "  family model=mlp_alpha p=23 n_layers=1 act=relu diff_vocab=false eqn_sign=false"
    assert no_alpha[2] == "labels:"
    assert "symmetric = gradient symmetricity > 0.98 (the Pizza side)" in text
    assert "too few" not in text and "grad sym" not in text  # (only statuses that occur are explained)


def test_phase_figures_per_family_no_empty_and_robust(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    runs = _concat(_family_rows(rng, 40, 0.4, p=23), _family_rows(rng, 40, 0.6, p=31))
    runs["d_model"] = np.where(np.arange(80) % 2 == 0, 32.0, 64.0)
    runs["circularity"][:] = 0.1  # no circular network: no circular figure
    runs["distance_irrelevance_largest_wrong"] = np.full(80, 0.5)
    arr = diagram.phase_arrays(runs, {"width_bins": "distinct"})
    paths = figures.phase_figures(runs, arr, str(tmp_path))
    names = sorted(os.path.basename(p) for p in paths)
    assert names == sorted(
        [f"alpha_panels_d{w}_all_p-{p}.png" for w in (32, 64) for p in (23, 31)]
        + [f"phase_width_all_p-{p}.png" for p in (23, 31)]
    )
    assert sorted(os.listdir(tmp_path)) == names
    # a single width draws no width plane
    one = {k: v[runs["d_model"] == 32] for k, v in runs.items()}
    arr1 = diagram.phase_arrays(one, {}, group_by=())
    out1 = tmp_path / "one"
    assert [os.path.basename(p) for p in figures.phase_figures(one, arr1, str(out1))] == [
        "alpha_panels_d32_all.png"
    ]

    # a figure that raises: a warning naming it, the other figures are still written
    def broken(*args, **kwargs):
        raise ValueError("broken figure")

    monkeypatch.setattr(figures, "plot_alpha_panels", broken)
    out2 = tmp_path / "broken"
    with pytest.warns(RuntimeWarning, match=r"alpha_panels_d32_all_p-23\.png not written: ValueError"):
        paths = figures.phase_figures(runs, arr, str(out2))
    assert sorted(os.listdir(out2)) == ["phase_width_all_p-23.png", "phase_width_all_p-31.png"]


# --------------------------------------------------------------------------------------------- #
# specs: models without attention


def test_mixed_spec_gives_the_mlp_one_network_per_seed():
    spec = load_spec(_case("c30_mixed.toml"))
    nets = expand(spec)
    tf = [n.values for n in nets if n.values["model"] == "transformer"]
    mlp = [n.values for n in nets if n.values["model"] == "mlp_alpha"]
    assert sorted((v["attention_rate"], v["seed"]) for v in tf) == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    assert sorted(v["seed"] for v in mlp) == [0, 1] and len(nets) == 6
    assert [n.index for n in nets] == list(range(6))
    assert {v["attention_rate"] for v in mlp} == {0.0}  # a placeholder: runs.csv shows NaN


def test_attention_rate_axis_without_attention_is_refused():
    for alpha in ([0.0, 1.0], 0.5, [0.5], {"dist": "uniform", "low": 0.0, "high": 1.0}):
        raw = {"axes": {"model": "mlp_alpha", "p": 7, "d_model": 16, "attention_rate": alpha}}
        if isinstance(alpha, dict):
            raw["sampling"] = {"n": 2}
        with pytest.raises(SpecError, match=r"axes.attention_rate=.*no model of this spec"):
            parse_spec(raw)
    base = {"p": 7, "d_model": 16}
    for ok in (0.0, [0.0]):
        parse_spec({"axes": {**base, "model": ["mlp_alpha", "mlp_beta"], "attention_rate": ok}})
    parse_spec({"axes": {**base, "model": ["mlp_alpha", "transformer"], "attention_rate": [0.0, 1.0]}})


# --------------------------------------------------------------------------------------------- #
# writing a sweep's results


def test_balanced_sweep_writes_runs_csv_and_phase_npz(tmp_path):
    """c19's failure, without training: the rows of a sweep whose labels are balanced on a 2-point
    α grid; write_results must write every file with α* NaN and the status by name."""
    from phasespace.io.store import load_sweep
    from phasespace.io.table import column_dtype
    from phasespace.sweep.derived import runs_columns, write_results

    spec = load_spec(_case("c19_balanced.toml"))
    rows = []
    for net in expand(spec):
        v = dict(net.values)
        sym = net.values["seed"] == 0  # one symmetric network at each α: balanced, slope 0
        v.update(
            index=net.index,
            bucket="b",
            gradient_symmetricity=0.99 if sym else 0.5,
            distance_irrelevance=0.3 if sym else 0.9,
            distance_irrelevance_largest_wrong=0.3 if sym else 0.9,
            circularity=0.999,
            test_accuracy=1.0,
            param_norm=10.0,
            first_full_test_step=100,
        )
        rows.append(v)
    columns = runs_columns(spec)
    missing = {"int64": 0, "float64": np.nan, "bool": False, "str": ""}
    for r in rows:  # every other column: a value of its type (the writer refuses a typeless cell)
        for c in columns:
            r.setdefault(c, missing[column_dtype(c)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing fails, so nothing warns
        write_results(str(tmp_path), rows, columns, spec)
    r = load_sweep(str(tmp_path))
    assert len(r.runs["index"]) == 4
    for subset in ("all", "circular"):
        st, dims, _ = r.metric(f"transition__{subset}__symmetric__status")
        assert dims == ["family", "d_model_bin"] and st.tolist() == [["no trend"]]
        assert np.isnan(r.phase[f"transition__{subset}__symmetric__alpha_star"]).all()
    assert os.listdir(tmp_path / "figures")
