"""`phasespace compare` against the published sweep tables (the gzipped copies shipped with the
package): SPEC §6 counts and α*, self-comparison."""

import os

import numpy as np
import pytest

from phasespace.cli import main
from phasespace.io import store
from phasespace.phase import compare, diagram


def _table(name):
    path = os.path.join(compare.DATA_DIR, f"{name}.gz")
    if not os.path.exists(path):
        pytest.fail(f"published table not shipped with the package: {path} missing")
    return path


@pytest.fixture(scope="module")
def fixed():
    return compare.load_table(_table("1l_fixedwidth.csv"))


@pytest.fixture(scope="module")
def vary():
    return compare.load_table(_table("1l_varywidth.csv"))


def test_published_columns_mapped(fixed):
    assert "distance_irrelevance_largest_wrong" in fixed and "distance_irrelevance" not in fixed
    assert fixed["act"][0] == "relu" and fixed["diff_vocab"].dtype == bool
    assert set(np.unique(fixed["n_layers"])) == {1, 2, 3, 4}
    assert np.all(fixed["d_model"] == 128) and np.all(fixed["p"] == 59)


def test_fixed_width_table_reproduces_spec6(fixed):
    c = compare.compare(fixed, fixed, ("fixed", "fixed"))
    a = c.arrays[0]
    assert c.counts[0] == {"rows": 7843, "architecture": 2397, "kept": 2381, "skipped_empty": 16}
    assert list(a["edges__d_model_bin"]) == [128, 256]
    n_all = a["transition__all__symmetric__n"][0, 0]
    n_circ = a["transition__circular__symmetric__n"][0, 0]
    assert (n_all, n_circ) == (2381, 817)
    assert n_circ / n_all == pytest.approx(0.3431, abs=5e-5)  # SPEC §6: 34.31% circular
    get = lambda subset, label: a[f"transition__{subset}__{label}__alpha_star"][0, 0]
    assert get("all", "symmetric") == pytest.approx(0.569, abs=0.01)
    assert get("circular", "symmetric") == pytest.approx(0.516, abs=0.01)
    assert get("all", "distance_dependent_largest_wrong") == pytest.approx(0.500, abs=0.01)
    assert get("circular", "distance_dependent_largest_wrong") == pytest.approx(0.591, abs=0.01)
    # SPEC §6 binned means of gradient symmetricity at d_model = 128
    gs = a["binned__all__gradient_symmetricity__mean"][0, 0]
    assert np.all((gs[:4] > 0.9915) & (gs[:4] < 0.9935))
    assert gs[5] == pytest.approx(0.955, abs=0.0005) and gs[9] == pytest.approx(0.477, abs=0.0005)


def test_varying_width_table_reproduces_spec6(vary):
    c = compare.compare(vary, vary)
    a = c.arrays[0]
    np.testing.assert_array_equal(a["edges__d_model_bin"], [32, 64, 128, 256, 512])
    np.testing.assert_array_equal(a["transition__all__symmetric__n"], [[296, 283, 301, 314]])
    np.testing.assert_array_equal(a["transition__circular__symmetric__n"], [[130, 110, 115, 111]])
    np.testing.assert_allclose(
        a["transition__all__symmetric__alpha_star"], [[0.462, 0.483, 0.662, 0.884]], atol=0.01
    )
    np.testing.assert_allclose(
        a["transition__circular__symmetric__alpha_star"], [[0.383, 0.443, 0.579, 0.858]], atol=0.01
    )
    assert np.all(a["transition__all__symmetric__status"] == "fitted")


def test_table_against_itself_gives_zero_differences(vary):
    c = compare.compare(vary, vary)
    pa, pb = c.arrays
    assert set(pa) == set(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    assert c.diff and all(k.endswith(("__mean", "__alpha_star")) for k in c.diff)
    for k, d in c.diff.items():
        assert np.all((d == 0) | np.isnan(d)), k
        np.testing.assert_array_equal(np.isnan(d), np.isnan(pa[k]), err_msg=k)
    rows = compare.comparison_rows(c)
    assert len(rows) == 4 * 2 * 2 and all(r["status_A"] == r["status_B"] for r in rows)
    # α* equal on both sides; NaN only where the fit has no α* (e.g. "no trend" at 256–511)
    assert all(r["alpha_star_diff"] == 0 or r["status_A"] != "fitted" for r in rows)
    assert sum(r["status_A"] == "fitted" for r in rows) >= 15


def test_compare_detects_a_difference(fixed):
    shifted = dict(fixed)
    shifted["attention_rate"] = 0.9 * fixed["attention_rate"]  # every transition moves to 0.9 α*
    shifted["gradient_symmetricity"] = fixed["gradient_symmetricity"] - 0.008
    c = compare.compare(shifted, fixed)
    a_star = c.arrays[1]["transition__all__symmetric__alpha_star"][0, 0]
    d = c.diff["transition__all__symmetric__alpha_star"][0, 0]
    assert d < -0.1 * a_star
    gs = c.diff["binned__all__gradient_symmetricity__mean"][0, 0]
    assert np.nanmin(gs) < -0.005 and np.isfinite(gs[:9]).all() and np.isnan(gs[9])  # A has no α > 0.9
    assert c.diff["binned__all__circularity__mean"][0, 0, 0] != 0  # other networks in the first α bin


def test_engine_runs_table_matches_published_variant(tmp_path, fixed):
    """An engine runs.csv (both distance-irrelevance variants) compares its largest-wrong variant
    with the published column."""
    sel, _ = compare.select(fixed)
    n = 300
    rows = []
    for i in range(n):
        rows.append(
            {
                "index": i,
                "attention_rate": sel["attention_rate"][i],
                "d_model": 128,
                "n_layers": 1,
                "act": "relu",
                "diff_vocab": False,
                "eqn_sign": False,
                "gradient_symmetricity": sel["gradient_symmetricity"][i],
                "distance_irrelevance": 0.0,
                "distance_irrelevance_largest_wrong": sel["distance_irrelevance_largest_wrong"][i],
                "circularity": sel["circularity"][i],
            }
        )
    store.write_csv(str(tmp_path / "runs.csv"), list(rows[0]), rows)
    mine = compare.load_table(str(tmp_path))
    assert mine["diff_vocab"].dtype == bool and mine["act"][0] == "relu"
    sub = {k: v[:n] for k, v in sel.items()}
    c = compare.compare(mine, sub)
    for k in (
        "binned__all__distance_irrelevance_largest_wrong__mean",
        "transition__all__symmetric__alpha_star",
    ):
        assert np.all((c.diff[k] == 0) | np.isnan(c.diff[k])), k
    assert "binned__all__distance_irrelevance__mean" not in c.diff  # no published counterpart


def test_cli_compare_table_with_table(tmp_path, capsys):
    t = _table("1l_fixedwidth.csv")
    assert main(["compare", t, "--table", t, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2381" in out and "817" in out and "0.569" in out and "0.516" in out
    assert (tmp_path / "alpha_star_vs_1l_fixedwidth.csv").is_file()
    back = store.read_csv(str(tmp_path / "alpha_star_vs_1l_fixedwidth.csv"))
    assert np.all(back["alpha_star_diff"] == 0)
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert diagram.SUBSETS == ("all", "circular")


def test_cli_compare_threshold_flags_use_the_analysis_names(tmp_path):
    t = _table("1l_fixedwidth.csv")
    rows, _ = compare.select(compare.load_table(t))

    def run(*flags):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        assert main(["compare", t, "--table", t, "--out", str(out), *flags]) == 0
        with np.load(out / "compare_1l_fixedwidth.npz") as z:
            return {k: z[k] for k in z.files}

    default = run()
    assert default["A__transition__circular__symmetric__n"].sum() == 817
    loose = run("--circular-threshold", "0.9", "--gradient-symmetricity-threshold", "0.5")
    assert loose["A__transition__circular__symmetric__n"].sum() == int(np.sum(rows["circularity"] >= 0.9))
    sym = "A__binned__all__symmetric__count"
    np.testing.assert_array_equal(loose[sym], default[sym])
    frac = "A__binned__all__symmetric__mean"
    assert np.nansum(loose[frac]) > np.nansum(default[frac])
    with pytest.raises(SystemExit):
        main(["compare", t, "--table", t, "--symmetric-threshold", "0.5"])
