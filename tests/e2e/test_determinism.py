"""Same results on any machine (issue 11): on a CPU a network's numbers do not depend on the device
count (``--cpu-devices``), a resume may change the device count, every run segment is recorded in
``environment.json``, and contradictory or invalid device counts are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from phasespace.cli import main
from phasespace.io.store import read_csv
from phasespace.sweep import segments
from phasespace.training import placement

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DRIVER = os.path.join(ROOT, "tests", "helpers", "kill_driver.py")

MIXED = """\
name = "mixed"
[axes]
p = 11
d_model = [16, 24]
attention_rate = [0.0, 1.0]
seed = 0
[train]
steps = 60
chunk_steps = 30
log_every = 10
[analysis]
n_triples = 20
[buckets]
max_buckets = 1
max_waste = 0.9
"""


def _env(devices: int | None = None, cache: str | None = None) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if cache is not None:  # the programs of devices seen before are read back, not recompiled
        env.update(
            JAX_COMPILATION_CACHE_DIR=cache,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    if devices is not None:
        env["XLA_FLAGS"] = f"{placement.XLA_DEVICE_COUNT_FLAG}={devices}"
    return env


def _wait(procs: dict) -> None:
    try:
        for p in procs.values():
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, (out or "")[-2000:] + (err or "")[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()


def assert_same_sweep(a, b) -> None:
    """Bit-identical runs.csv, history, analysis arrays and final parameters."""
    assert (a / "runs.csv").read_text() == (b / "runs.csv").read_text()
    names = ["history.npz", "analysis.npz"]
    names += [os.path.join("params", f) for f in sorted(os.listdir(a / "params"))]
    assert sorted(os.listdir(a / "params")) == sorted(os.listdir(b / "params"))
    for name in names:
        with np.load(a / name) as x, np.load(b / name) as y:
            assert sorted(x.files) == sorted(y.files), name
            for k in x.files:
                assert np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f"), (name, k)


def test_results_do_not_depend_on_the_cpu_device_count(tmp_path):
    """Four networks of two widths (one bucket, zero-padded) trained with 1, 2 and 4 CPU devices
    (and the default, one per core, when that is another count): the same bytes in runs.csv and
    the same parameters, histories and analysis arrays. Before the fix XLA compiled the D-device
    program differently from the one-device one, and parameters differed by ~1e-7 after a few
    steps (the runs share a compilation cache: a program is only read back when its HLO is the
    same, so the cache cannot hide a difference)."""
    spec = tmp_path / "mixed.toml"
    spec.write_text(MIXED)
    cli = [sys.executable, "-m", "phasespace.cli", "run", str(spec), "--quiet"]
    counts: list[int | None] = [1, 2, 4]
    if len(os.sched_getaffinity(0)) not in counts:
        counts.append(None)

    def start(n: int | None) -> subprocess.Popen:
        return subprocess.Popen(
            [*cli, "--out", str(tmp_path / f"d{n}"), *([] if n is None else ["--cpu-devices", str(n)])],
            env=_env(cache=str(tmp_path / "xla-cache")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    _wait({1: start(1)})  # fills the cache, then the others run side by side
    _wait({n: start(n) for n in counts[1:]})
    env = json.loads((tmp_path / "d4" / "environment.json").read_text())
    assert len(env["devices"]) == 4 and env["buckets"][0]["networks"] == 4
    assert sorted(read_csv(str(tmp_path / "d4" / "runs.csv"))["d_model"]) == [16, 16, 24, 24]
    for n in counts[1:]:
        assert_same_sweep(tmp_path / "d1", tmp_path / f"d{n}")


RESUME = """\
name = "devres"
[axes]
p = 11
d_model = 16
attention_rate = [0.0, 0.5, 1.0]
seed = 0
[train]
steps = 90
chunk_steps = 15
log_every = 10
checkpoint_every = 30
[analysis]
n_triples = 20
"""


def test_resume_on_another_device_count_gives_the_uninterrupted_results(tmp_path):
    """Killed (SIGKILL) after the step-60 checkpoint of a run on 2 CPU devices and resumed on 1:
    the results equal an uninterrupted run's on 1 device, with no warning; environment.json keeps
    the first run's record and lists both segments; a re-run of the finished sweep on 4 devices
    trains nothing, keeps the original timings and adds its own segment."""
    spec = tmp_path / "devres.toml"
    spec.write_text(RESUME)
    ref, out = tmp_path / "uninterrupted", tmp_path / "resumed"

    def driver(kill: str, where, devices: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, DRIVER, kill, str(spec), str(where)],
            env=_env(devices, cache=str(tmp_path / "xla-cache")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    _wait({"ref": driver("none", ref, 1)})
    killed = driver("chunk:75:wait=60", out, 2)
    killed.communicate(timeout=600)
    assert killed.returncode == -9, "the run was not killed where asked"
    first = json.loads((out / "environment.json").read_text())
    assert not (out / "runs.csv").exists() and "wall_seconds" not in first

    resume = driver("none", out, 1)
    _, err = resume.communicate(timeout=600)
    assert resume.returncode == 0, err[-3000:]
    assert "ResumeEnvironmentWarning" not in err  # same backend: the device count changes nothing
    assert_same_sweep(ref, out)

    env = json.loads((out / "environment.json").read_text())
    assert env["date"] == first["date"] and len(env["devices"]) == 2  # the first run's record
    segs = env["segments"]
    assert [len(s["devices"]) for s in segs] == [2, 1]
    assert [s["completed"] for s in segs] == [False, True]
    assert [s["backend"] for s in segs] == ["cpu", "cpu"]
    assert list(segs[1]["started_at_step"].values()) == [60]
    assert env["resumed"] is True and env["network_steps_this_run"] == 3 * 30

    rerun = driver("none", out, 4)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    again = json.loads((out / "environment.json").read_text())
    for key in ("wall_seconds", "network_steps_per_second", "network_steps_this_run", "date", "devices"):
        assert again[key] == env[key], key
    assert [len(s["devices"]) for s in again["segments"]] == [2, 1, 4]
    last = again["segments"][-1]
    assert last["network_steps_this_run"] == 0 and list(last["started_at_step"].values()) == [90]
    assert_same_sweep(ref, out)


def _record(backend="cpu", devices=2, processes=1, jax_version="0.10.2"):
    return {
        "versions": {"phasespace": "0", "jax": jax_version, "jaxlib": jax_version},
        "backend": backend,
        "devices": [f"dev{i}" for i in range(devices)],
        "device_kind": backend,
        "process_count": processes,
        "date": "2026-01-01T00:00:00+00:00",
        "padding": {},
    }


@pytest.mark.parametrize(
    ("before", "now", "differs"),
    [
        (_record(devices=2), _record(devices=1), []),  # CPU, one process: free
        (_record("gpu", 8), _record(devices=8), ["backend 'gpu' → 'cpu'", "device_kind 'gpu' → 'cpu'"]),
        (_record("gpu", 8), _record("gpu", 4), ["devices 8 → 4"]),
        (_record(processes=2), _record(), ["process_count 2 → 1"]),
        (_record(jax_version="0.10.1"), _record(), ["jax 0.10.1 → 0.10.2", "jaxlib 0.10.1 → 0.10.2"]),
    ],
)
def test_segment_differences(before, now, differs):
    assert segments.differences(segments.segment(before), segments.segment(now)) == differs


def test_resume_on_another_backend_warns_and_keeps_the_first_record(tmp_path):
    stored = {**_record("gpu", 8), "wall_seconds": 12.0, "network_steps_per_second": 5.0}
    (tmp_path / "environment.json").write_text(json.dumps(stored))  # written before segments existed
    with pytest.warns(segments.ResumeEnvironmentWarning, match=r"backend 'gpu' → 'cpu'.*float32"):
        record, seg = segments.begin(str(tmp_path), _record(devices=2), resuming=True)
    assert record["backend"] == "gpu" and record["wall_seconds"] == 12.0
    assert [s["backend"] for s in record["segments"]] == ["gpu", "cpu"]
    timings = {"wall_seconds": 1.0, "network_steps_this_run": 0, "network_steps_per_second": None}
    record = segments.finish(record, seg, timings, {"b": 90})
    assert record["wall_seconds"] == 12.0 and record["network_steps_per_second"] == 5.0
    assert record["segments"][-1]["wall_seconds"] == 1.0 and record["segments"][-1]["started_at_step"] == {
        "b": 90
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh, _ = segments.begin(str(tmp_path), _record(devices=2), resuming=False)
    assert fresh["backend"] == "cpu" and len(fresh["segments"]) == 1


@pytest.mark.parametrize("bad", ["0", "-1", "-2"])
def test_cpu_devices_must_be_positive(tmp_path, capsys, monkeypatch, bad):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    spec = tmp_path / "mixed.toml"
    spec.write_text(MIXED)
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--cpu-devices", bad]) == 2
    err = capsys.readouterr().err.strip()
    allowed = "must be a positive integer (≥ 1); omit it for one device per CPU core"
    assert err == f"phasespace: error: --cpu-devices={bad}: {allowed}"
    assert not (tmp_path / "out").exists()


def test_cpu_devices_contradicting_xla_flags_is_an_error(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "mixed.toml"
    spec.write_text(MIXED)
    flag = f"{placement.XLA_DEVICE_COUNT_FLAG}=3"
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_enable_fast_math=false {flag}")
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--cpu-devices", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--cpu-devices=2" in err and f"XLA_FLAGS, which sets {flag}" in err
    assert placement.use_cpu_devices(3) == 3 and placement.use_cpu_devices() == 3  # agreeing: fine
    monkeypatch.setenv("XLA_FLAGS", f"{placement.XLA_DEVICE_COUNT_FLAG}=many")
    with pytest.raises(ValueError, match="device count must be a positive integer"):
        placement.use_cpu_devices()


@pytest.mark.slow  # long; run with `pytest -m slow` (see the README)
def test_a_network_does_not_depend_on_the_others_trained_or_analysed_with_it():
    """The same network trained and analysed alone, with one other network or in a population of
    six (two widths, zero-padded to one bucket): bit-identical parameters, curves and metrics
    (the analysis used to vmap over the networks, batching their matmuls: 1e-7 differences)."""
    import jax

    from phasespace.analysis.circuits import analyze_full
    from phasespace.models.transformer import TransformerArch
    from phasespace.population.stack import NetworkSpec, build_population
    from phasespace.spec.networks import Recipe
    from phasespace.training.loop import train_population

    arch = TransformerArch(p=7, d_model=12)
    nets = [NetworkSpec(seed=i, attention_rate=i / 5, d_model=(8, 12)[i % 2], lr=3e-3) for i in range(6)]

    def run(idx):
        pop = build_population(arch, [nets[i] for i in idx])
        state, hist = train_population(pop, Recipe(steps=30), chunk_steps=15)
        params = jax.tree.map(np.asarray, state.params)
        m, arrays = analyze_full(arch, params, pop.hparams, {"n_triples": 20})
        return {
            **{f"p{i}": x for i, x in enumerate(jax.tree.leaves(params))},
            **{f"h_{k}": v for k, v in hist.items()},
            **{f"m_{k}": np.asarray(v) for k, v in {**m, **arrays}.items()},
        }

    full = run(list(range(6)))
    for idx in ([3], [5, 4]):
        part = run(idx)
        for k, v in part.items():
            np.testing.assert_array_equal(v, full[k][idx], err_msg=f"{k} of networks {idx}")
