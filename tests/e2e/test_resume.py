"""Resume after a kill (issue 5): SIGKILL at several points, including inside a checkpoint write,
then ``phasespace run`` again on the same directory gives exactly the uninterrupted results;
resuming with a different spec is refused naming the fields; a corrupt latest checkpoint is
skipped in favour of the previous one, with a warning.

The subprocesses share a persistent XLA compilation cache, so only the first one compiles.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from phasespace.cli import main
from phasespace.io import checkpoint, store
from phasespace.io.checkpoint import (
    BucketCheckpoint,
    CheckpointWarning,
    LoggedHistory,
    ResumeError,
    check_sweep_dir,
    logged_steps,
    resume_fields,
    spec_diff,
    sweep_lock,
)
from phasespace.spec.parse import parse_spec
from phasespace.sweep.run import run_sweep
from phasespace.training.step import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(REPO, "tests", "helpers", "kill_driver.py")

SPEC = """\
name = "tiny"
[axes]
p = 7
d_model = 8
n_heads = 2
attention_rate = [0.0, 1.0]
seed = [0, 1]
lr = {lr}
[train]
steps = 60
chunk_steps = {chunk}
checkpoint_every = 20
log_every = 7
[analysis]
n_triples = 20
"""
BUCKET = "p7_L1_H2_relu_D8"


def write_spec(folder, lr="1e-3", chunk=10, name="tiny.toml"):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(SPEC.format(lr=lr, chunk=chunk))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    env = dict(
        os.environ,
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(root / "xla-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    spec = write_spec(str(root))

    def run(kill, out):
        return subprocess.run(
            [sys.executable, DRIVER, kill, spec, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    ref = root / "uninterrupted"
    r = run("none", ref)
    assert r.returncode == 0, r.stderr[-3000:]
    return SimpleNamespace(root=root, spec=spec, run=run, ref=str(ref), env=env)


def assert_same_results(a, b):
    with open(os.path.join(a, "runs.csv")) as f, open(os.path.join(b, "runs.csv")) as g:
        assert f.read() == g.read()
    for name in ("history.npz", "phase.npz"):
        with np.load(os.path.join(a, name)) as x, np.load(os.path.join(b, name)) as y:
            assert sorted(x.files) == sorted(y.files)
            for k in x.files:
                assert x[k].dtype == y[k].dtype, (name, k)
                assert np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f"), (name, k)


@pytest.mark.slow  # long; run with `pytest -m slow` (see the README)
def test_kill_at_many_points_then_resume_gives_the_uninterrupted_results(work):
    """One sweep directory killed five times in a row, each resume continuing the last."""
    out = work.root / "killed"
    ck = out / "checkpoints" / BUCKET

    # 1. mid-training, after the checkpoints of steps 20 and 40 are committed
    r = work.run("chunk:50:wait=40", out)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert {"20", "40"} <= set(os.listdir(ck)) and not (out / "runs.csv").exists()

    # 2. the latest checkpoint gets corrupted (a data file truncated); the resume falls back to
    #    step 20 with a warning, moves step 40 aside, and is killed inside its next checkpoint
    #    write (arrays written, commit rename not yet done)
    data = max(glob.glob(str(ck / "40" / "state" / "**" / "d" / "*"), recursive=True), key=os.path.getsize)
    os.truncate(data, 10)
    r = work.run("commit:1", out)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "CheckpointWarning" in r.stderr and "is corrupt or partial" in r.stderr
    assert "falling back to the previous checkpoint" in r.stderr
    assert os.path.isdir(ck / "_corrupt" / "40-0")
    assert sorted(n for n in os.listdir(ck) if n.isdigit()) == ["20"]
    assert glob.glob(str(ck / "40.orbax-checkpoint-tmp*"))  # the interrupted write

    # 3. at the start of the analysis (training finished; its last save may still be in flight)
    r = work.run("analysis", out)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert not (ck / "result.json").exists()

    # 4. while writing runs.csv (the bucket's result is recorded; the temporary is complete)
    r = work.run("write:runs.csv", out)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert (ck / "result.json").exists() and not (out / "runs.csv").exists()
    assert glob.glob(str(out / ".runs.csv.*.tmp"))

    # 5. run to completion: nothing is retrained, the stale temporary is removed
    r = work.run("none", out)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "environment.json") as f:
        env = json.load(f)
    assert env["resumed"] is True and env["network_steps_this_run"] == 0
    assert not glob.glob(str(out / ".*.tmp"))
    assert_same_results(work.ref, str(out))


TWO_BUCKETS = SPEC.replace("n_heads = 2", "n_heads = [2, 4]")


def _two_bucket_run(work, name):
    spec = os.path.join(str(work.root), "two.toml")
    with open(spec, "w") as f:
        f.write(TWO_BUCKETS.format(lr="1e-3", chunk=10))
    out = work.root / name

    def run(kill, wait=True):
        cmd = [sys.executable, DRIVER, kill, spec, str(out)]
        if not wait:
            return subprocess.Popen(
                cmd, env=work.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        return subprocess.run(cmd, env=work.env, capture_output=True, text=True, timeout=600)

    return out, run


@pytest.mark.slow
def test_two_buckets_killed_between_and_inside_buckets(work):
    ref, run_ref = _two_bucket_run(work, "two-uninterrupted")
    assert run_ref("none").returncode == 0
    out, run = _two_bucket_run(work, "two-killed")
    for kill in ("chunk:30", "commit:2", "chunk:40:nth=2", "write:phase.npz", "none"):
        r = run(kill)
        assert r.returncode == (0 if kill == "none" else -signal.SIGKILL), (kill, r.stderr[-3000:])
    assert_same_results(str(ref), str(out))


@pytest.mark.slow
def test_sigkill_at_random_times_then_resume(work):
    """SIGKILL from outside at random moments (wherever it lands: compiling, training, inside an
    orbax write, analysing, writing outputs), repeatedly, then a final run."""
    import random
    import time

    ref, run_ref = _two_bucket_run(work, "two-reference")
    assert run_ref("none").returncode == 0
    _, run_timed = _two_bucket_run(work, "two-timing")  # a warm (cached-compile) run's duration
    t0 = time.perf_counter()
    assert run_timed("none").returncode == 0
    duration = time.perf_counter() - t0
    out, run = _two_bucket_run(work, "two-random")
    rng = random.Random(5)
    kills = 0
    for _ in range(6):
        p = run("none", wait=False)
        time.sleep(rng.uniform(0.1, 0.7) * duration)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        p.stderr.close()
        print(
            f"after attempt (kills so far {kills}):",
            sorted(os.path.relpath(c, out) for c in glob.glob(str(out / "checkpoints" / "*" / "*"))),
            "runs.csv" if (out / "runs.csv").exists() else "",
        )
    r = run("none")
    assert r.returncode == 0, r.stderr[-3000:]
    assert kills >= 2
    assert_same_results(str(ref), str(out))


def test_resume_with_a_different_spec_is_refused_naming_the_fields(work, tmp_path, capsys, monkeypatch):
    import phasespace.sweep.run

    out = tmp_path / "sweep"
    shutil.copytree(work.ref, out)
    before = {p: os.path.getmtime(p) for p in glob.glob(str(out / "**"), recursive=True)}
    monkeypatch.setattr(phasespace.sweep.run, "train_bucket", lambda *a, **k: pytest.fail("compute started"))
    other = write_spec(str(tmp_path), lr="2e-3", name="other.toml")
    with open(other, "a") as f:
        f.write("[sampling]\nseed = 3\n")
    assert main(["run", other, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "was made with a different spec" in err
    assert "axes.lr: 0.001 (stored) ≠ 0.002 (this spec)" in err
    assert "sampling.seed: 0 (stored) ≠ 3 (this spec)" in err
    assert "axes.attention_rate" not in err  # only the differing fields are named
    after = {p: os.path.getmtime(p) for p in glob.glob(str(out / "**"), recursive=True)}
    assert before == after  # nothing touched


def test_resume_free_fields_may_change_and_finished_buckets_are_not_retrained(work, tmp_path, monkeypatch):
    import phasespace.sweep.run

    out = tmp_path / "sweep"
    shutil.copytree(work.ref, out)
    os.remove(out / "runs.csv")
    monkeypatch.setattr(phasespace.sweep.run, "train_population", lambda *a, **k: pytest.fail("retrained"))
    spec = parse_spec(
        {**_raw(work.spec), "name": "renamed", "train": {**_raw(work.spec)["train"], "chunk_steps": 20}}
    )
    run_sweep(spec, str(out), progress=False)
    assert_same_results(work.ref, str(out))


def _raw(path):
    import tomllib

    with open(path, "rb") as f:
        return tomllib.load(f)


def test_spec_diff_and_sweep_dir_checks(tmp_path):
    a = parse_spec(_raw_spec())
    b = parse_spec({**_raw_spec(), "train": {"steps": 61, "chunk_steps": 3, "checkpoint_every": 5}})
    diff = spec_diff(resume_fields(a), resume_fields(b))
    assert diff == ["train.steps: 60 (stored) ≠ 61 (this spec)"]
    assert spec_diff({"x": 1}, {"y": 2}) == [
        "x: 1 (stored) ≠ '(absent)' (this spec)",
        "y: '(absent)' (stored) ≠ 2 (this spec)",
    ]
    assert check_sweep_dir(str(tmp_path / "new"), a) is False
    store.write_json(str(tmp_path / "spec.json"), a.to_dict())
    assert check_sweep_dir(str(tmp_path), a) is True
    with pytest.raises(ResumeError, match=r"train\.steps: 60"):
        check_sweep_dir(str(tmp_path), b)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResumeError, match="exists and is not a directory"):
        check_sweep_dir(str(tmp_path / "file"), a)
    (tmp_path / "spec.json").write_text("{trunc")
    with pytest.raises(ResumeError, match="cannot read the stored spec"):
        check_sweep_dir(str(tmp_path), a)


def _raw_spec():
    return {"axes": {"p": 7, "d_model": 8, "n_heads": 2, "seed": [0, 1]}, "train": {"steps": 60}}


def test_second_run_on_the_same_directory_is_refused(tmp_path):
    with (
        sweep_lock(str(tmp_path)),
        pytest.raises(ResumeError, match=f"pid {os.getpid()}"),
        sweep_lock(str(tmp_path)),
    ):
        pass
    with sweep_lock(str(tmp_path)):  # released again
        pass


def test_logged_history_resumes_to_the_uninterrupted_columns():
    steps, every = 23, 5
    full = {
        k: np.arange(2 * steps, dtype=np.float32).reshape(2, steps) * (i + 1)
        for i, k in enumerate(checkpoint.HISTORY_FIELDS)
    }
    keep = logged_steps(steps, every)
    assert keep.tolist() == [0, 5, 10, 15, 20, 22]
    one = LoggedHistory(steps, every)
    for a in range(0, steps, 4):
        one.add({k: v[:, a : a + 4] for k, v in full.items()})
    two = LoggedHistory(steps, every)
    for a in range(0, 12, 4):
        two.add({k: v[:, a : a + 4] for k, v in full.items()})
    saved = two.arrays()
    assert saved["step"].tolist() == [0, 5, 10]
    three = LoggedHistory(steps, every, start=12, arrays=saved)
    for a in range(12, steps, 3):
        three.add({k: v[:, a : a + 3] for k, v in full.items()})
    for h in (one.arrays(), three.arrays()):
        assert h["step"].tolist() == keep.tolist()
        for k in checkpoint.HISTORY_FIELDS:
            np.testing.assert_array_equal(h[k], full[k][:, keep])


# --------------------------------------------------------------------------------------------- #
# Checkpoint fallback, unit level (no training)


def _state(step, r=3):
    rng = np.random.default_rng(step)
    return TrainState(
        params={"params": {"W_E": rng.normal(size=(r, 4, 7)).astype(np.float32)}},
        opt_state=(rng.normal(size=(r, 4, 7)).astype(np.float32), np.full(r, step, np.int32)),
        step=np.full(r, step, np.int32),
        first_full_train=np.full(r, -1, np.int32),
        first_full_test=np.full(r, -1, np.int32),
        first_solved_train=rng.integers(-1, step + 1, r).astype(np.int32),
        first_solved_test=rng.integers(-1, step + 1, r).astype(np.int32),
        best_train_accuracy=rng.uniform(size=r).astype(np.float32),
        best_test_accuracy=rng.uniform(size=r).astype(np.float32),
        best_train_loss=rng.uniform(size=r).astype(np.float32),
        best_test_loss=np.r_[np.nan, rng.uniform(size=r - 1)].astype(np.float32),
        nonfinite_step=np.array([-1, step - 1, -1], np.int32),
        stop_count=rng.integers(0, 5, r).astype(np.int32),
        stopped_step=np.where(np.arange(r) == 2, step // 2, -1).astype(np.int32),
    )


def _hist(step, r=3):
    return {"train_loss": np.full((r, step // 10), step, np.float32), "step": np.arange(step // 10)}


def _bucket_ckpt(path, **train):
    spec = parse_spec({**_raw_spec(), "train": {"steps": 60, "checkpoint_every": 20, **train}})
    bucket = SimpleNamespace(key=BUCKET, networks=[SimpleNamespace(index=i) for i in range(3)])
    return BucketCheckpoint(str(path), bucket, spec)


def _same(a, b):
    return all(
        np.array_equal(x, y, equal_nan=np.asarray(x).dtype.kind == "f")
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


def test_run_record_fields_are_checkpointed(tmp_path):
    """Every field of the state, the run record included, is saved and restored exactly."""
    ck = _bucket_ckpt(tmp_path / BUCKET)
    saved = _state(20)
    ck.save(saved, _hist(20))
    ck.close()
    state, _ = _bucket_ckpt(tmp_path / BUCKET).restore(_state(0))
    for name in TrainState._fields[2:]:
        a, b = np.asarray(getattr(saved, name)), np.asarray(getattr(state, name))
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    assert (
        np.asarray(state.best_train_accuracy).tolist() != np.asarray(_state(0).best_train_accuracy).tolist()
    )


def test_checkpoint_saved_before_early_stopping_resumes_with_its_initial_values(tmp_path):
    """A checkpoint whose state lacks the early-stop fields (saved before they existed, so
    without early stopping) and whose recorded spec lacks the minibatch/early-stop keys resumes:
    every stored leaf as saved, the counter 0 and the stop step −1 (never)."""
    import typing

    names = TrainState._fields[:-2]
    assert TrainState._fields[-2:] == ("stop_count", "stopped_step")
    Old = typing.NamedTuple("TrainState", [(n, typing.Any) for n in names])
    saved = _state(20)
    ck = _bucket_ckpt(tmp_path / BUCKET)
    ck.fields = {k: v for k, v in ck.fields.items() if k not in checkpoint.ADDED_KEYS}
    ck.save(Old(*(getattr(saved, n) for n in names)), _hist(20))
    ck.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, hist = _bucket_ckpt(tmp_path / BUCKET).restore(_state(0))
    want = saved._replace(stop_count=np.zeros(3, np.int32), stopped_step=np.full(3, -1, np.int32))
    assert _same(state, want) and _same(hist, _hist(20))
    assert np.asarray(state.stopped_step).dtype == np.int32


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_checkpoint_of_an_older_format_is_not_resumed(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "FORMAT", 1)
    ck = _bucket_ckpt(tmp_path / BUCKET)
    ck.save(_state(20), _hist(20))
    ck.close()
    monkeypatch.setattr(checkpoint, "FORMAT", 2)
    with pytest.warns(CheckpointWarning, match=r"older phasespace \(format 1"):
        assert _bucket_ckpt(tmp_path / BUCKET).restore(_state(0)) is None


def test_spec_json_with_resolved_values_resumes(tmp_path):
    """spec.json holds the resolved spec (SweepSpec.resolved); a directory written before it
    (SweepSpec.to_dict) resumes too, and so does the new one."""
    a = parse_spec(_raw_spec())
    for stored in (a.to_dict(), a.resolved()):
        store.write_json(str(tmp_path / "spec.json"), stored)
        assert check_sweep_dir(str(tmp_path), a) is True
    b = parse_spec({**_raw_spec(), "train": {"steps": 60, "b2": 0.99}})
    with pytest.raises(ResumeError, match=r"train\.b2: None \(stored\) ≠ 0\.99"):
        check_sweep_dir(str(tmp_path), b)


def _corrupt_data(path):
    data = max(glob.glob(os.path.join(path, "state", "**", "d", "*"), recursive=True), key=os.path.getsize)
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 2)
        f.write(b"\xff" * 8)


def _overwrite(path, text):
    with open(path, "w") as f:
        f.write(text)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: _corrupt_data(p),
        lambda p: os.truncate(
            max(glob.glob(os.path.join(p, "state", "**", "d", "*"), recursive=True), key=os.path.getsize), 3
        ),
        lambda p: shutil.rmtree(os.path.join(p, "history")),
        lambda p: _overwrite(os.path.join(p, "meta", "metadata"), "{"),
    ],
    ids=["bytes-flipped", "truncated", "item-missing", "meta-garbled"],
)
# a failed orbax restore can leave a tensorstore callback aimed at its closed event loop (harmless)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, damage):
    ck = _bucket_ckpt(tmp_path / BUCKET)
    for s in (20, 40):
        ck.save(_state(s), _hist(s))
    ck.close()
    damage(str(tmp_path / BUCKET / "40"))
    ck = _bucket_ckpt(tmp_path / BUCKET)
    with pytest.warns(CheckpointWarning, match=r"checkpoint .*/40 is corrupt or partial .* falling back"):
        state, hist = ck.restore(_state(0))
    assert _same(state, _state(20)) and _same(hist, _hist(20))
    assert os.listdir(tmp_path / BUCKET / "_corrupt") == ["40-0"]
    ck.save(_state(40), _hist(40))  # the step can be written again
    ck.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, _ = _bucket_ckpt(tmp_path / BUCKET).restore(_state(0))
    assert _same(state, _state(40))


def test_checksum_mismatch_is_detected(tmp_path, monkeypatch):
    ck = _bucket_ckpt(tmp_path / BUCKET)
    ck.save(_state(20), _hist(20))
    real = checkpoint._checksums
    monkeypatch.setattr(checkpoint, "_checksums", lambda g: {k: "0" for k in real(g)})
    ck.save(_state(40), _hist(40))
    ck.close()
    monkeypatch.setattr(checkpoint, "_checksums", real)
    with pytest.warns(CheckpointWarning, match="do not match the checksums recorded at save time"):
        state, _ = _bucket_ckpt(tmp_path / BUCKET).restore(_state(0))
    assert _same(state, _state(20))


def test_all_checkpoints_corrupt_restarts_from_scratch(tmp_path):
    ck = _bucket_ckpt(tmp_path / BUCKET)
    for s in (20, 40):
        ck.save(_state(s), _hist(s))
    ck.close()
    for s in (20, 40):
        shutil.rmtree(tmp_path / BUCKET / str(s) / "state")
    with pytest.warns(CheckpointWarning) as record:
        assert _bucket_ckpt(tmp_path / BUCKET).restore(_state(0)) is None
    assert len(record) == 2


def test_wrong_leaf_shape_is_corrupt_and_other_spec_is_refused(tmp_path):
    ck = _bucket_ckpt(tmp_path / BUCKET)
    ck.save(_state(20), _hist(20))
    ck.close()
    with pytest.warns(
        CheckpointWarning, match=r"state leaf .*W_E.*: expected shape \(4, 4, 7\) float32, found \(3, 4, 7\)"
    ):
        assert (
            _bucket_ckpt(tmp_path / BUCKET).restore(
                _state(0, r=4)._replace(nonfinite_step=np.zeros(4, np.int32))
            )
            is None
        )
    ck = _bucket_ckpt(tmp_path / "b2")
    ck.save(_state(20), _hist(20))
    ck.close()
    with pytest.raises(ResumeError, match=r"train.steps: 60 \(stored\) ≠ 80 \(this spec\)"):
        _bucket_ckpt(tmp_path / "b2", steps=80).restore(_state(0))
    assert os.path.isdir(tmp_path / "b2" / "20")  # a refusal never moves a checkpoint aside


@pytest.mark.slow  # long; run with `pytest -m slow` (see the README)
def test_metrics_along_training_survive_a_kill(work):
    """With ``[analysis] every``, the metrics recorded along training are checkpointed with the
    state: kill after the step-40 checkpoint, resume, and metrics_history.npz equals an
    uninterrupted run's."""
    spec = os.path.join(str(work.root), "tracked.toml")
    with open(work.spec) as f:
        text = f.read()
    with open(spec, "w") as f:
        f.write(text.replace("[analysis]\n", "[analysis]\nevery = 20\n"))

    def run(kill, out):
        return subprocess.run(
            [sys.executable, DRIVER, kill, spec, str(out)],
            env=work.env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    ref, out = work.root / "tracked_ref", work.root / "tracked_killed"
    assert run("none", ref).returncode == 0
    r = run("chunk:50:wait=40", out)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    r = run("none", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_results(str(ref), str(out))
    with np.load(ref / "metrics_history.npz") as x, np.load(out / "metrics_history.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        np.testing.assert_array_equal(x["step"], [0, 20, 40, 60])
        for k in x.files:
            assert np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f"), k


@pytest.mark.slow  # long; run with `pytest -m slow` (see the README)
def test_minibatch_sweep_with_early_stopping_survives_a_kill(work):
    """Shuffled minibatches (39 training pairs, batches of 10) with early_stop = [0, 45]: killed
    after the step-40 checkpoint, the resume continues the same batch order and early-stop count
    (every network stops at the start of the epoch at step 48) and gives the uninterrupted
    results."""
    spec = os.path.join(str(work.root), "minibatch.toml")
    with open(work.spec) as f:
        text = f.read()
    with open(spec, "w") as f:
        f.write(
            text.replace(
                "log_every = 7\n", "log_every = 7\nbatch_size = 10\nshuffle = true\nearly_stop = [0.0, 45]\n"
            )
        )

    def run(kill, out):
        return subprocess.run(
            [sys.executable, DRIVER, kill, spec, str(out)],
            env=work.env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    ref, out = work.root / "minibatch_ref", work.root / "minibatch_killed"
    assert run("none", ref).returncode == 0
    r = run("chunk:50:wait=40", out)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    r = run("none", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_results(str(ref), str(out))
    runs = store.load_sweep(str(out)).runs
    assert runs["stopped_step"].tolist() == [48.0] * 4 and runs["steps"].tolist() == [48] * 4
