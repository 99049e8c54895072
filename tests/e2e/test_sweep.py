"""End to end: `phasespace run` on a tiny spec writes a complete, loadable sweep directory."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from phasespace.cli import main
from phasespace.io.store import load_sweep, read_csv
from phasespace.sweep.reanalyze import analyze_sweep

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
    d = tmp_path_factory.mktemp("sweep")
    spec = d / "tiny.toml"
    spec.write_text(TINY)
    out = d / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    return out


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
