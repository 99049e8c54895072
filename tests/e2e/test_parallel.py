"""Devices and hosts: sharding the run axis over 4 devices, and two processes sharing one sweep."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from phasespace.io.store import read_csv
from phasespace.training import placement

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(ROOT, "tests", "helpers", "parallel_worker.py")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # long; run with `pytest -m slow` (see the README)
def test_four_devices_give_the_same_results_as_one(tmp_path):
    """6 networks on 4 CPU devices (2, 2 and 2 per device) vs on 1 device: bit-identical
    parameters, histories and metrics (every device runs the same one-device program)."""
    procs = {
        n: subprocess.Popen(
            [sys.executable, WORKER, str(n), str(tmp_path / f"d{n}.npz")],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in (1, 4)
    }
    try:
        for p in procs.values():
            out, _ = p.communicate(timeout=300)
            assert p.returncode == 0, out
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    outs = {n: np.load(tmp_path / f"d{n}.npz") for n in procs}
    a, b = outs[1], outs[4]
    assert int(a["devices"]) == 1 and int(b["devices"]) == 4
    for k in a.files:
        if k == "devices":
            continue
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


SPEC = """
name = "two"
[axes]
p = 7
d_model = 8
attention_rate = [0.0, 0.5, 1.0]
seed = [0, 1, 2]
[train]
steps = 6
chunk_steps = 3
log_every = 2
[analysis]
n_triples = 10
"""


@pytest.mark.slow  # long; run with `pytest -m slow` (see the README)
def test_two_processes_split_one_sweep_into_one_table(tmp_path):
    """Two jax.distributed processes on 127.0.0.1 train one sweep (9 networks, padded to 10 over
    the 2 processes' devices) and process 0 writes ONE table, equal to a single-process run."""
    spec = tmp_path / "two.toml"
    spec.write_text(SPEC)
    port = _free_port()
    cli = [sys.executable, "-m", "phasespace.cli", "run", str(spec), "--quiet"]
    dist = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = [
        subprocess.Popen(
            [*cli, "--out", str(tmp_path / "dist"), *dist, "--process-id", str(i)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (0, 1)
    ]
    single = subprocess.Popen(
        [*cli, "--out", str(tmp_path / "single"), "--cpu-devices", "1"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    logs = []
    try:
        for p in [*procs, single]:
            out, _ = p.communicate(timeout=300)
            logs.append(out)
            assert p.returncode == 0, out
    finally:
        for p in [*procs, single]:
            if p.poll() is None:
                p.kill()
    dist_runs = read_csv(str(tmp_path / "dist" / "runs.csv"))
    ref = read_csv(str(tmp_path / "single" / "runs.csv"))
    assert len(dist_runs["index"]) == 9
    env = json.loads((tmp_path / "dist" / "environment.json").read_text())
    assert env["process_count"] == 2 and len(env["devices"]) == 2
    assert env["precision"] == env["precision_effective"] == "float32" and env["fast"] is True
    assert env["buckets"][0]["layout"]["padded_networks"] == 10
    assert set(dist_runs["precision"]) == {"float32"} and set(dist_runs["compute"]) == {"fast"}
    for k, col in ref.items():
        if col.dtype.kind == "f":
            np.testing.assert_allclose(dist_runs[k], col, rtol=1e-5, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(dist_runs[k], col, err_msg=k)


def test_pad_runs_repeats_the_last_network():
    tree = {"a": np.arange(6).reshape(3, 2), "b": np.array([1.0, 2.0, 3.0])}
    out = placement.pad_runs(tree, 5)
    np.testing.assert_array_equal(out["a"], [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    np.testing.assert_array_equal(out["b"], [1, 2, 3, 3, 3])
    with pytest.raises(ValueError, match="longer than the target"):
        placement.pad_runs(tree, 2)


def test_layout_chunks_and_padding():
    mesh = placement.run_mesh(jax.devices()[:1])
    layout = placement.Layout(mesh, n_networks=10, group_size=2, host_chunk=4)
    assert layout.chunks == [(0, 4), (4, 8), (8, 10)]
    assert layout.padded(3) == 3
    with pytest.raises(ValueError, match="group_size=0"):
        placement.Layout(mesh, 10, 0, 4)
    small = placement.simple_layout(3, group_size=8, devices=jax.devices()[:1])  # whatever the device count
    assert small.group_size == 3 and small.chunks == [(0, 3)]


def test_distributed_options_are_checked(monkeypatch):
    for var in (placement.ENV_COORDINATOR, placement.ENV_NUM_PROCESSES, placement.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    assert placement.initialize_distributed() is False  # single process: nothing to start
    with pytest.raises(placement.DistributedConfigError, match="needs all three"):
        placement.initialize_distributed("127.0.0.1:1234", 2, None)
    with pytest.raises(placement.DistributedConfigError, match="process_id=2"):
        placement.initialize_distributed("127.0.0.1:1234", 2, 2)
    monkeypatch.setenv(placement.ENV_NUM_PROCESSES, "two")
    with pytest.raises(placement.DistributedConfigError, match="must be integers"):
        placement.initialize_distributed()
