"""End to end: `phasespace run` on a tiny spec writes a complete, loadable sweep directory."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from phasespace.analysis.circuits import circuit_columns
from phasespace.cli import main
from phasespace.io import store
from phasespace.io.store import SchemaWarning, load_sweep, read_csv
from phasespace.io.table import column_dtype
from phasespace.spec.parse import AXES
from phasespace.sweep.derived import RUN_COLUMNS
from phasespace.sweep.reanalyze import analyze_sweep
from tests.helpers import run_spec

TINY = """
name = "tiny"
[axes]
p = 7
d_model = 8
attention_rate = [0.0, 1.0]
seed = [0, 1]
[train]
steps = 40
chunk_steps = 20
log_every = 10
"""


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    return run_spec(tmp_path_factory.mktemp("sweep"), TINY)


def test_sweep_directory_contents(tiny_sweep):
    for f in ("spec.toml", "spec.json", "environment.json", "runs.csv", "phase.npz", "history.npz"):
        assert (tiny_sweep / f).is_file(), f
    assert (tiny_sweep / "figures" / "metrics_vs_attention_rate.png").stat().st_size > 1000
    env = json.loads((tiny_sweep / "environment.json").read_text())
    assert env["precision"] == "float32" and env["versions"]["jax"] and env["devices"]
    assert not [f for f in os.listdir(tiny_sweep) if f.endswith(".tmp")]


def test_load_sweep_arrays_consistent(tiny_sweep):
    r = load_sweep(str(tiny_sweep))
    runs = r.runs
    assert len(runs["index"]) == 4
    np.testing.assert_array_equal(runs["attention_rate"], [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(runs["seed"], [0, 1, 0, 1])
    assert np.all(runs["steps"] == 40)
    arr, axes, coords = r.metric("gradient_symmetricity")
    assert axes == ["attention_rate", "seed"] and arr.shape == (2, 2)
    np.testing.assert_array_equal(coords["attention_rate"], [0.0, 1.0])
    np.testing.assert_allclose(arr.ravel(), runs["gradient_symmetricity"], rtol=1e-6)
    mean, axes_m, _ = r.metric("gradient_symmetricity__mean")
    assert axes_m == ["attention_rate"]
    np.testing.assert_allclose(mean, arr.mean(axis=1), rtol=1e-6)
    assert r.history["train_loss"].shape == (4, len(r.history["step"]))
    np.testing.assert_array_equal(r.history["step"], [0, 10, 20, 30, 39])
    # the table's final metrics are recomputed by the analysis pass: loss after the last step
    # is below the loss logged before it
    assert np.all(runs["train_loss"] <= r.history["train_loss"][:, -1] * 1.5)


def _assert_same_arrays(got, want, where, exact=True):
    assert sorted(got) == sorted(want), where
    for k, w in want.items():
        g = got[k]
        assert g.shape == w.shape and g.dtype.kind == w.dtype.kind, (where, k)
        if exact:
            assert np.array_equal(g, w, equal_nan=w.dtype.kind == "f"), f"{where}: {k}"
        elif w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=0, equal_nan=True, err_msg=f"{where}: {k}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{where}: {k}")


def test_analyze_of_an_unchanged_sweep_rewrites_the_same_files(tiny_sweep, tmp_path):
    """``phasespace analyze DIR`` writes through the writer of ``phasespace run``: phase.npz (grid
    arrays, binned arrays and α*), analysis.npz and runs.csv come out as the run wrote them."""
    d = tmp_path / "copy"
    shutil.copytree(tiny_sweep, d)
    before = {}
    for name in ("phase.npz", "analysis.npz"):
        with np.load(d / name) as z:
            before[name] = {k: z[k] for k in z.files}
    runs_before = read_csv(str(d / "runs.csv"))
    phase = before["phase.npz"]
    assert "coord__attention_rate" in phase and "gradient_symmetricity__mean" in phase
    assert "binned__all__symmetric__mean" in phase and "transition__all__symmetric__alpha_star" in phase
    os.remove(d / "phase.npz")
    os.remove(d / "analysis.npz")
    assert main(["analyze", str(d)]) == 0
    for name, want in before.items():
        with np.load(d / name) as z:
            _assert_same_arrays({k: z[k] for k in z.files}, want, name)
    _assert_same_arrays(read_csv(str(d / "runs.csv")), runs_before, "runs.csv", exact=False)
    assert list(read_csv(str(d / "runs.csv"))) == list(runs_before)
    # the thresholds are [analysis] options: overriding one relabels the table and the phase arrays
    rows = analyze_sweep(str(d), {"gradient_symmetricity_threshold": -1.0})
    assert all(r["algorithm"] in ("non-circular", "pizza", "mixed") for r in rows)
    with np.load(d / "phase.npz") as z:
        frac, cnt = z["binned__all__symmetric__mean"], z["binned__all__symmetric__count"]
        assert np.all(frac[cnt > 0] == 1.0)
        assert '"gradient_symmetricity_threshold": -1.0' in str(z["options"])


def test_bad_spec_fails_before_compute(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(TINY.replace("p = 7", "p = 8"))
    proc = subprocess.run(
        [sys.executable, "-m", "phasespace.cli", "run", str(spec), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "axes.p=8" in proc.stderr and "prime" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_single_network_spec(tmp_path):
    """A spec whose axes are all single values is one network; it runs end to end."""
    spec = tmp_path / "one.toml"
    spec.write_text(
        TINY.replace("attention_rate = [0.0, 1.0]", "attention_rate = 0.5").replace(
            "seed = [0, 1]", "seed = 3"
        )
    )
    out = tmp_path / "one"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    r = load_sweep(str(out))
    assert len(r.runs["index"]) == 1 and r.runs["attention_rate"][0] == 0.5
    arr, axes, _ = r.metric("gradient_symmetricity")
    assert axes == [] and arr.shape == () and arr == pytest.approx(r.runs["gradient_symmetricity"][0])


# --------------------------------------------------------------------------------------------- #
# The runs table: one type per column, the run record, the resolved spec


def _expected_dtype(name):
    t = column_dtype(name)
    assert t is not None, f"column {name!r} has no type in the runs-table schema"
    return {"int64": np.dtype(np.int64), "float64": np.dtype(np.float64), "bool": np.dtype(bool)}.get(t, "U")


def _assert_schema_dtypes(runs):
    for name, col in runs.items():
        want = _expected_dtype(name)
        assert (col.dtype.kind == "U") if want == "U" else (col.dtype == want), (name, col.dtype, want)


def test_every_written_column_has_its_schema_type(tiny_sweep):
    """All-healthy sweep with α = [0, 1]: every column has its one fixed type after loading (no
    inference: α stays float64 though its values are 0 and 1, ``degenerate`` is text though every
    cell is empty), and the schema covers every column the producers write."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SchemaWarning)
        r = load_sweep(str(tiny_sweep))
    runs = r.runs
    _assert_schema_dtypes(runs)
    assert runs["attention_rate"].dtype == np.float64 and runs["attention_rate"].tolist() == [0, 0, 1, 1]
    assert runs["weight_decay"].dtype == np.float64 and runs["lr"].dtype == np.float64
    assert runs["degenerate"].dtype.kind == "U" and runs["degenerate"].tolist() == [""] * 4
    assert runs["train_accuracy"].dtype == np.float64 and runs["circle1_k"].dtype == np.float64
    assert runs["first_full_test_step"].dtype == np.float64 and runs["collapsed"].dtype == bool
    assert runs["index"].dtype == np.int64 and runs["steps"].dtype == np.int64
    # data_seed = −1 is resolved per network: the split seed is the seed
    np.testing.assert_array_equal(runs["data_seed"], runs["seed"])
    # no column goes missing-as-a-number: empty circle slots are NaN, never 0
    n = runs["n_circles"]
    for i in range(1, 7):
        for f in ("k", "delta", "components"):
            col = runs[f"circle{i}_{f}"]
            assert np.all(np.isnan(col[n < i])) and np.all(col[n >= i] > 0), (i, f)
    for name in ("index", "bucket", *AXES, *RUN_COLUMNS, *circuit_columns(12)):
        _expected_dtype(name)
    assert set(runs) <= {"index", "bucket", *AXES, *RUN_COLUMNS, *circuit_columns(6)}


def test_write_csv_types_and_round_trip(tmp_path):
    """Floats read back exactly at their own precision; a column's type never depends on its
    values; missing is nan / the empty string; a value that does not fit its column is refused."""
    rng = np.random.default_rng(0)
    f32 = rng.uniform(size=5).astype(np.float32)
    f64 = rng.uniform(size=5)
    rows = [
        {
            "index": i,
            "attention_rate": float(i % 2),
            "train_accuracy": np.float32(1.0),
            "train_loss": f32[i],
            "lr": f64[i],
            "param_norm": float(f32[i]),  # a float32 value held by a Python float (result.json)
            "first_full_test_step": np.nan,
            "degenerate": "",
            "collapsed": np.bool_(i == 3),
            "circle1_k": np.nan if i else 17.0,
        }
        for i in range(5)
    ]
    cols = [*rows[0], "algorithm", "best_test_loss"]
    path = str(tmp_path / "runs.csv")
    store.write_csv(path, cols, rows)
    text = (tmp_path / "runs.csv").read_text().splitlines()
    assert text[1] == f"0,0.0,1.0,{f32[0]!s},{float(f64[0])!r},{f32[0]!s},nan,,false,17.0,,nan"
    t = store.read_runs(path)
    _assert_schema_dtypes(t)
    assert t["train_accuracy"].tolist() == [1.0] * 5 and t["attention_rate"].tolist() == [0, 1, 0, 1, 0]
    assert np.array_equal(t["train_loss"].astype(np.float32), f32)
    assert np.array_equal(t["param_norm"].astype(np.float32), f32)
    assert np.array_equal(t["lr"], f64)  # float64 exactly
    assert t["degenerate"].tolist() == [""] * 5 and t["algorithm"].tolist() == [""] * 5
    assert np.isnan(t["first_full_test_step"]).all() and np.isnan(t["best_test_loss"]).all()
    assert t["collapsed"].tolist() == [False, False, False, True, False]
    assert t["circle1_k"][0] == 17.0 and np.isnan(t["circle1_k"][1:]).all()
    with pytest.raises(ValueError, match=r"row 0, column 'steps' \(int64\)"):
        store.write_csv(path, ["steps"], [{"steps": np.nan}])
    with pytest.raises(ValueError, match=r"row 0, column 'collapsed' \(bool\)"):
        store.write_csv(path, ["collapsed"], [{}])
    # a column the schema does not know: inferred, with a warning; with schema=None, silently
    store.write_csv(path, ["index", "foreign"], [{"index": 0, "foreign": 2}, {"index": 1, "foreign": 3}])
    with pytest.warns(SchemaWarning, match="foreign"):
        t = store.read_runs(path)
    assert t["foreign"].dtype == np.int64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.read_csv(path)  # no schema: every column inferred (tables of other origin)
    (tmp_path / "bad.csv").write_text("index,steps\n0,x\n")
    with pytest.raises(ValueError, match=r"column 'steps' \(int64\): invalid literal"):
        store.read_runs(str(tmp_path / "bad.csv"))


def test_pandas_and_xarray_views(tiny_sweep, monkeypatch):
    r = load_sweep(str(tiny_sweep))
    pd = pytest.importorskip("pandas")
    df = r.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df.columns) == list(r.runs) and len(df) == 4
    assert df["attention_rate"].dtype == np.float64 and df["collapsed"].dtype == bool
    assert df["steps"].dtype == np.int64
    np.testing.assert_array_equal(df["gradient_symmetricity"].to_numpy(), r.runs["gradient_symmetricity"])
    pytest.importorskip("xarray")
    ds = r.to_xarray()
    gs = ds["gradient_symmetricity"]
    assert gs.dims == ("attention_rate", "seed")
    np.testing.assert_array_equal(gs.coords["attention_rate"].values, [0.0, 1.0])
    # a float32 metric: runs.csv holds its shortest float32 decimal, phase.npz the float32 itself
    np.testing.assert_array_equal(
        gs.values.ravel().astype(np.float32), r.runs["gradient_symmetricity"].astype(np.float32)
    )
    assert ds["gradient_symmetricity__mean"].dims == ("attention_rate",)
    assert ds["binned__all__circular__mean"].dims == ("family", "d_model_bin", "attention_rate_bin")
    assert '"alpha_bins"' in ds.attrs["options"]
    for mod, extra in (("pandas", "pandas"), ("xarray", "xarray")):
        monkeypatch.setitem(sys.modules, mod, None)
        with pytest.raises(ImportError, match=rf"pip install phasespace\[{extra}\]"):
            r.to_pandas() if mod == "pandas" else r.to_xarray()


def test_spec_json_holds_the_resolved_recipe(tiny_sweep):
    stored = json.loads((tiny_sweep / "spec.json").read_text())
    assert stored["train"]["b2"] is None  # as given: the family's default ...
    recipe = stored["resolved"]["recipes"]["transformer"]  # ... resolved here
    assert (recipe["b2"], recipe["warmup_steps"], recipe["steps"]) == (0.98, 10, 40)
    assert stored["resolved"]["data_seed"] == "seed"


C2_COLLAPSE = """
name = "c2_min"
[axes]
p = 23
d_model = 64
attention_rate = 1.0
seed = 0
lr = 3e-2
weight_decay = 0.0
[train]
steps = 40
b2 = 0.999
chunk_steps = 10
log_every = 1
"""
"""Case c2 (shared/cases/c2_collapse.toml): 100% train accuracy at step 25, 73.5% at step 40."""

C4_NEVER = """
name = "c4_never"
[axes]
p = 31
d_model = 64
attention_rate = 1.0
weight_decay = 1.0
train_fraction = 0.25
seed = 0
[train]
steps = 500
chunk_steps = 250
log_every = 10
"""
"""Case c4 (shared/cases/c4_never.toml): a network that never generalises."""


@pytest.fixture(scope="module")
def case_sweeps(tmp_path_factory):
    d = tmp_path_factory.mktemp("cases")
    out = {}
    for name, text in (("c2", C2_COLLAPSE), ("c4", C4_NEVER)):
        (d / f"{name}.toml").write_text(text)
        assert main(["run", str(d / f"{name}.toml"), "--out", str(d / name), "--quiet"]) == 0
        out[name] = d / name
    return out


def test_collapse_case_is_recorded_with_its_best_values(case_sweeps):
    r = load_sweep(str(case_sweeps["c2"]))
    runs, h = r.runs, r.history
    _assert_schema_dtypes(runs)
    n_train, n_test = 423, 106  # floor(0.8 · 23²), the rest
    acc = h["train_accuracy"][0]  # every step 0 … 39 (log_every = 1)
    np.testing.assert_array_equal(h["step"], np.arange(40))
    # training accuracy first ≥ 0.99 at step 22, exactly 1 at step 25, 73.5% after step 40
    assert runs["first_solved_train_step"][0] == 22.0 and acc[22] >= 0.99 > acc[21]
    assert runs["first_full_train_step"][0] == 25.0 and acc[25] == 1.0 > acc[24]
    assert np.float32(runs["train_accuracy"][0]) == np.float32(311 / n_train)  # 0.7352246
    assert runs["best_train_accuracy"][0] == 1.0
    assert np.float32(runs["best_test_accuracy"][0]) == np.float32(44 / n_test)  # 0.41509435
    assert np.float32(runs["best_test_accuracy"][0]) == h["test_accuracy"][0].max()
    assert np.float32(runs["best_train_loss"][0]) == min(
        h["train_loss"][0].min(), np.float32(runs["train_loss"][0])
    )
    assert np.float32(runs["best_test_loss"][0]) == min(
        h["test_loss"][0].min(), np.float32(runs["test_loss"][0])
    )
    assert runs["generalization_gap"][0] == pytest.approx(1 - 44 / n_test, abs=1e-7)
    assert runs["collapsed"].tolist() == [True]
    assert runs["algorithm"].tolist() == ["collapsed"] and runs["algorithm_code"].tolist() == [4]
    # test accuracy never reached 0.99: its first steps and the delays are NaN
    for k in (
        "first_solved_test_step",
        "first_full_test_step",
        "generalization_delay1",
        "generalization_delay2",
    ):
        assert np.isnan(runs[k][0]), k
    assert np.isnan(runs["nonfinite_step"][0]) and runs["steps"][0] == 40
    assert runs["attention_rate"].dtype == np.float64 and runs["weight_decay"].tolist() == [0.0]
    assert r.spec["resolved"]["recipes"]["transformer"]["b2"] == 0.999
    # re-analysis recomputes the metrics but keeps the training record and the collapsed label,
    # and every column keeps its type
    before = (case_sweeps["c2"] / "runs.csv").read_text()
    assert main(["analyze", str(case_sweeps["c2"])]) == 0
    assert (case_sweeps["c2"] / "runs.csv").read_text() == before


def test_never_generalising_case_has_nan_first_test_steps(case_sweeps):
    path = case_sweeps["c4"] / "runs.csv"
    header, row = path.read_text().splitlines()
    cells = dict(zip(header.split(","), row.split(","), strict=True))
    for k in (
        "first_solved_test_step",
        "first_full_test_step",
        "generalization_delay1",
        "generalization_delay2",
    ):
        assert cells[k] == "nan", k
    r = load_sweep(str(case_sweeps["c4"]))
    runs = r.runs
    _assert_schema_dtypes(runs)
    assert np.isnan(runs["first_solved_test_step"][0]) and np.isnan(runs["first_full_test_step"][0])
    assert runs["test_accuracy"][0] < 0.99 and r.history["test_accuracy"].max() < 0.99
    assert np.float32(runs["best_test_accuracy"][0]) == r.history["test_accuracy"][0].max()
    # training itself was solved (first steps recorded) and did not collapse
    assert runs["first_solved_train_step"][0] == 92.0 and runs["first_full_train_step"][0] == 99.0
    assert runs["train_accuracy"][0] == 1.0 and runs["collapsed"].tolist() == [False]
    assert runs["generalization_gap"][0] == pytest.approx(1 - runs["best_test_accuracy"][0], abs=1e-7)
