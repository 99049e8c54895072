"""Resumable multi-process runs (issue 14): a two-process ``jax.distributed`` sweep (local CPU
processes) killed with SIGKILL after its first checkpoint and restarted with the same command
gives the uninterrupted run's ``runs.csv``; restarted as ONE process it works too and records
the change of process count.

Process 0 alone reads and writes the checkpoints (every process holds the full host state after
each chunk) and broadcasts what it read on a resume. Measured: the resumed two-process table is
bit-identical to the uninterrupted one; the one-process resume agrees to float32 rounding.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from phasespace.io.store import read_csv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "helpers", "kill_driver.py")

SPEC = """\
name = "hosts"
[axes]
p = 7
d_model = 8
n_heads = 2
attention_rate = [0.0, 1.0]
seed = [0, 1, 2]
[train]
steps = 60
chunk_steps = 10
checkpoint_every = 20
log_every = 10
[analysis]
n_triples = 10
"""


def _env(cache: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = cache
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env.pop("XLA_FLAGS", None)
    return env


def _json(*path: str) -> dict:
    with open(os.path.join(*path)) as f:
        return json.load(f)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp, kill: str, out: str, processes: int) -> list[tuple[int, str]]:
    """Start ``processes`` processes of ``phasespace run`` (each SIGKILLed at ``kill``)."""
    spec = os.path.join(tmp, "hosts.toml")
    port = _port()
    cmds = []
    for i in range(processes):
        dist = [
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            str(processes),
            "--process-id",
            str(i),
        ]
        cmds.append(
            [sys.executable, DRIVER, kill, spec, out, *(dist if processes > 1 else ["--cpu-devices", "1"])]
        )
    procs = [
        subprocess.Popen(
            c, env=_env(os.path.join(tmp, "xla")), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c in cmds
    ]
    try:
        return [(p.wait(timeout=400), p.stdout.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow  # long; run with `pytest -m slow` (see the README)
def test_two_processes_killed_and_resumed(tmp_path):
    tmp = str(tmp_path)
    with open(os.path.join(tmp, "hosts.toml"), "w") as f:
        f.write(SPEC)
    ref, killed = os.path.join(tmp, "ref"), os.path.join(tmp, "killed")
    for rc, log in _run(tmp, "none", ref, 2):
        assert rc == 0, log
    # both processes SIGKILLed after the first checkpoint (step 20), once it is committed
    for rc, log in _run(tmp, "chunk:20:wait=20", killed, 2):
        assert rc == -9, log
    bucket = os.path.join(killed, "checkpoints", "p7_L1_H2_relu_D8")
    assert sorted(int(s) for s in os.listdir(bucket) if s.isdigit()) == [20]
    assert not os.path.exists(os.path.join(killed, "runs.csv"))
    one = os.path.join(tmp, "one")
    shutil.copytree(killed, one)
    for rc, log in _run(tmp, "none", killed, 2):  # the same command again
        assert rc == 0, log
    a, b = read_csv(os.path.join(ref, "runs.csv")), read_csv(os.path.join(killed, "runs.csv"))
    assert list(a) == list(b) and len(a["index"]) == 6
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit-identical
    env = _json(killed, "environment.json")
    assert env["resumed"] and env["process_count"] == 2
    assert env["network_steps_this_run"] == 6 * 40  # only the 40 steps after the checkpoint
    # another process count: one process resumes the two processes' checkpoint, and says so
    [(rc, log)] = _run(tmp, "none", one, 1)
    assert rc == 0, log
    c = read_csv(os.path.join(one, "runs.csv"))
    for k in a:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(c[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(c[k], a[k], err_msg=k)
    env = _json(one, "environment.json")
    # the record keeps the first run's setting; each run is a segment of its own
    assert env["process_count"] == 2 and [g["process_count"] for g in env["segments"]] == [2, 1]
    resumed = env["buckets"][0]["layout"]["resumed_from"]
    assert resumed == {"step": 20, "process_count": 2, "device_count": 2}, resumed
