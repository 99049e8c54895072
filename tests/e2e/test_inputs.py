"""Bad inputs get a clear error, never a traceback, and nothing is lost (issues 10 and 11): the
smallest meaningful modulus, sweep names, empty specs, sizes that cannot fit, refused runs that
claim no directory, bad files (one line naming the file, exit code 2), resumed dtypes and damaged
final parameters rewritten. (Input layouts of the metrics: tests/analysis/test_layouts.py.)"""

from __future__ import annotations

import os

import numpy as np
import pytest

from phasespace.analysis import metrics
from phasespace.cli import main
from phasespace.defaults import MIN_P
from phasespace.spec.parse import SpecError, load_spec, parse_spec

CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cases")


def _spec(**axes):
    return {"axes": {"p": 7, "d_model": 8, "n_heads": 2, **axes}, "train": {"steps": 4, "log_every": 2}}


# --------------------------------------------------------------------------------------------- #
# 1. The smallest modulus whose circuit metrics mean something


def test_circularity_is_constant_below_the_minimum_modulus_and_not_at_it():
    # the reason behind MIN_P: p = 3 centred embeddings span 2 dimensions, so circularity is 2/3
    # whatever the network; from p = 5 on it depends on the embedding
    rng = np.random.default_rng(0)
    for p, constant in ((3, True), (MIN_P, False)):
        values = [float(metrics.circularity(rng.normal(size=(p, 16)).astype(np.float32))) for _ in range(20)]
        assert bool(np.ptp(values) < 1e-5) is constant, (p, values)
    assert abs(values[0] - 2 / 3) > 1e-3
    assert MIN_P == 5


@pytest.mark.parametrize("p", [3, [3, 7]])
def test_a_modulus_below_five_is_refused_with_the_reason(p):
    with pytest.raises(SpecError) as e:
        parse_spec(_spec(p=p))
    msg = str(e.value)
    for fragment in ("axes.p", "=3", "prime ≥ 5", "4 principal components", "p − 1 dimensions"):
        assert fragment in msg, msg
    parse_spec(_spec(p=5))  # the smallest accepted


def test_the_p3_case_file_is_refused(tmp_path, capsys):
    path = os.path.join(CASES, "c20_p3.toml")
    out = tmp_path / "out"
    assert main(["run", path, "--out", str(out), "--quiet"]) == 2
    assert "axes.p=3: the modulus p must be a prime ≥ 5" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------------------------- #
# 4. Sweep names are one safe path component


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "a b", "runs\\x", "é", 3])
def test_unsafe_sweep_names_are_refused(name):
    with pytest.raises(SpecError, match="one path component"):
        parse_spec({**_spec(), "name": name})


def test_safe_names_and_the_default_directory_stays_in_runs(tmp_path):
    from phasespace.sweep.run import default_out_dir

    for name in ("quick", "p59-d128_v2.1", "...", ".hidden"):
        out = default_out_dir(parse_spec({**_spec(), "name": name}))
        assert os.path.dirname(out) == "runs" and os.path.basename(out) == name
    # a name from the file name must be safe too: the spec then has to name itself
    path = tmp_path / "my sweep.toml"
    path.write_text("[axes]\np = 7\nd_model = 8\nn_heads = 2\n")
    with pytest.raises(SpecError, match="add name = "):
        load_spec(str(path))
    path.write_text('name = "mine"\n[axes]\np = 7\nd_model = 8\nn_heads = 2\n')
    assert load_spec(str(path)).name == "mine"


def test_dotdot_name_writes_nothing_into_the_current_directory(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "s.toml"
    spec.write_text('name = ".."\n[axes]\np = 7\nd_model = 8\nn_heads = 2\n[train]\nsteps = 4\n')
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main(["run", str(spec), "--quiet"]) == 2
    assert "name='..': must be one path component" in capsys.readouterr().err
    assert sorted(os.listdir(work)) == ["runs"] and os.listdir(work / "runs") == []


# --------------------------------------------------------------------------------------------- #
# 5. An empty spec is refused; a refused run claims no directory


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "[train]\nsteps = 10\n"])
def test_an_empty_spec_is_refused_saying_what_a_spec_must_contain(tmp_path, capsys, text):
    path = tmp_path / "empty.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "empty spec: a spec must contain" in err and "[axes]" in err and "name" in err
    assert "Traceback" not in err
    assert not out.exists()
    parse_spec({"name": "paper"})  # a name alone is a deliberate default (paper) network
    parse_spec({"axes": {}})


def test_a_run_refused_for_its_size_claims_no_directory(tmp_path, capsys):
    out = tmp_path / "out"
    big = tmp_path / "big.toml"
    big.write_text('[axes]\np = 101\nd_model = 8\nn_heads = 2\n[train]\nsteps = 4\nmemory_limit = "1MiB"\n')
    assert main(["run", str(big), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "p=101: one network's full-batch logits alone need 4121204 bytes" in err, err
    assert "1048576 bytes" in err and "Traceback" not in err
    assert not out.exists()
    # the corrected spec runs on the same --out (no "different spec" refusal)
    big.write_text("[axes]\np = 7\nd_model = 8\nn_heads = 2\n[train]\nsteps = 4\nlog_every = 2\n")
    assert main(["run", str(big), "--out", str(out), "--quiet"]) == 0
    assert (out / "runs.csv").exists()


def test_a_size_refused_by_the_compiled_plan_claims_no_directory(tmp_path, capsys):
    out = tmp_path / "out"
    spec = tmp_path / "s.toml"
    # the logits (7² × 7 × 4 B) fit 64 KiB, the compiled training program does not
    spec.write_text('[axes]\np = 7\nd_model = 64\nn_heads = 2\n[train]\nsteps = 4\nmemory_limit = "64KiB"\n')
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "one network per device needs" in err and "Traceback" not in err
    assert not out.exists()


def test_a_huge_modulus_gets_the_clean_memory_error_before_any_allocation(tmp_path, capsys, monkeypatch):
    import phasespace.sweep.run as run

    def no_population(*a, **k):
        raise AssertionError("population built before the size check")

    monkeypatch.setattr(run, "build_population", no_population)
    spec = tmp_path / "s.toml"
    out = tmp_path / "runs" / "out"  # (runs/ too is created by the run, and removed when refused)
    for p in (100003, 10007):
        spec.write_text(f"[axes]\np = {p}\nd_model = 8\nn_heads = 2\n[train]\nsteps = 4\n")
        assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"phasespace: error: p={p}: one network's full-batch logits alone need {p**3 * 4} bytes" in err
        assert err.count("\n") == 1 and not out.exists() and not out.parent.exists()


# --------------------------------------------------------------------------------------------- #
# 6. Bad files: one line naming the file, exit code 2


TINY = {
    "name": "tiny",
    "axes": {"p": 7, "d_model": 8, "n_heads": 2, "seed": [0, 1]},
    "train": {"steps": 20, "chunk_steps": 10, "checkpoint_every": 10, "log_every": 5},
}
BUCKET = "p7_L1_H2_relu_D8"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny sweep (copied by each test that changes it)."""
    from phasespace.sweep.run import run_sweep

    out = tmp_path_factory.mktemp("finished") / "sweep"
    run_sweep(parse_spec(TINY), str(out), progress=False)
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("phasespace: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _truncate(path, size=None):
    os.truncate(path, os.path.getsize(path) // 2 if size is None else size)


def test_a_truncated_reference_checkpoint_is_a_one_line_error(tmp_path, capsys, reference_dir):
    import shutil

    folder = tmp_path / "ref"
    folder.mkdir()
    run = sorted(f[:-4] for f in os.listdir(reference_dir) if f.endswith(".npz"))[0]
    for ext in (".npz", ".json"):
        shutil.copy(os.path.join(reference_dir, run + ext), folder / (run + ext))
        os.chmod(folder / (run + ext), 0o644)
    npz = str(folder / (run + ".npz"))
    _truncate(npz)
    assert main(["analyze", str(folder), "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, npz, "not a readable .npz checkpoint, truncated or corrupt", "BadZipFile")
    assert main(["reference", str(folder)]) == 2
    _one_line_error(capsys, npz, "truncated or corrupt")
    shutil.copy(os.path.join(reference_dir, run + ".npz"), npz)
    config = str(folder / (run + ".json"))
    _truncate(config)
    assert main(["reference", str(folder)]) == 2
    _one_line_error(capsys, config, "reference config:", "not readable JSON")


def test_analyze_on_a_foreign_runs_csv_is_a_one_line_error(tmp_path, capsys, finished):
    import shutil

    folder = tmp_path / "foreign"
    (folder / "params").mkdir(parents=True)
    (folder / "runs.csv").write_text("x,y\n1,2\n")
    shutil.copy(finished / "params" / f"{BUCKET}.npz", folder / "params")
    assert main(["analyze", str(folder)]) == 2
    _one_line_error(capsys, str(folder / "runs.csv"), "no 'index' column", "not a runs table")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty; expected a CSV table with a header row"),
        ("attention_rate,d_model,gradient_symmetricity,circularity\n", "a header but no rows"),
        ("attention_rate,d_model\n0.5,128\n", "no column 'gradient_symmetricity'"),
    ],
    ids=["empty", "header-only", "no-metrics"],
)
def test_compare_on_an_empty_or_foreign_csv_is_a_one_line_error(tmp_path, capsys, text, fragment):
    path = tmp_path / "t.csv"
    path.write_text(text)
    assert main(["compare", str(path), "--table", str(path)]) == 2
    _one_line_error(capsys, str(path), fragment)


@pytest.mark.slow  # long; run with `pytest -m slow` (see the README)
def test_a_corrupt_checkpoint_falls_back_without_event_loop_tracebacks(tmp_path, finished):
    import glob
    import subprocess
    import sys

    out = _copy(finished, tmp_path / "sweep")
    ck = out / "checkpoints" / BUCKET
    os.remove(ck / "result.json")
    os.remove(out / "runs.csv")
    latest = max(int(n) for n in os.listdir(ck) if n.isdigit())
    data = max(
        glob.glob(str(ck / str(latest) / "state" / "**" / "d" / "*"), recursive=True), key=os.path.getsize
    )
    _truncate(data, 10)
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        'name = "tiny"\n[axes]\np = 7\nd_model = 8\nn_heads = 2\nseed = [0, 1]\n'
        "[train]\nsteps = 20\nchunk_steps = 10\ncheckpoint_every = 10\nlog_every = 5\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "phasespace.cli", "run", str(spec), "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"checkpoint {ck / str(latest)} is corrupt or partial" in r.stderr
    assert "Event loop is closed" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert (out / "runs.csv").exists() and os.listdir(ck / "_corrupt") == [f"{latest}-0"]


# --------------------------------------------------------------------------------------------- #
# 8. Resumed rows keep their dtypes; 7. damaged final parameters are rewritten


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, (k, a[k].dtype, b[k].dtype)
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


def test_resumed_rows_keep_their_dtypes(tmp_path, finished):
    from phasespace.sweep.run import run_sweep

    out = _copy(finished, tmp_path / "sweep")
    os.remove(out / "runs.csv")  # every bucket's rows now come from its result record
    run_sweep(parse_spec(TINY), str(out), progress=False)
    for name in ("analysis.npz", "history.npz", "phase.npz"):
        _assert_same_arrays(_arrays(finished / name), _arrays(out / name))
    assert _arrays(out / "analysis.npz")["pc_power"].dtype == np.float32
    with open(out / "runs.csv") as f, open(finished / "runs.csv") as g:
        assert f.read() == g.read()


@pytest.mark.parametrize("damage", ["truncated", "missing", "no-checkpoint-left"])
def test_a_damaged_params_file_is_rewritten_by_a_rerun(tmp_path, capsys, finished, damage):
    import shutil

    from phasespace.io.checkpoint import CheckpointWarning
    from phasespace.sweep.run import run_sweep

    out = _copy(finished, tmp_path / "sweep")
    params = out / "params" / f"{BUCKET}.npz"
    if damage == "missing":
        os.remove(params)
    else:
        _truncate(params)
        assert main(["analyze", str(out)]) == 2
        _one_line_error(capsys, str(params), "not a readable .npz params file")
    if damage == "no-checkpoint-left":
        for n in os.listdir(out / "checkpoints" / BUCKET):
            if n.isdigit():
                shutil.rmtree(out / "checkpoints" / BUCKET / n)
    with pytest.warns(CheckpointWarning, match=f"{BUCKET}.npz (is missing|differs from the checksum)"):
        run_sweep(parse_spec(TINY), str(out), progress=False)
    _assert_same_arrays(_arrays(finished / "params" / f"{BUCKET}.npz"), _arrays(params))
    with open(out / "runs.csv") as f, open(finished / "runs.csv") as g:
        assert f.read() == g.read()
    assert main(["analyze", str(out)]) == 0
    # the new file's checksum is recorded: a further run reads the bucket's record, warning-free
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        run_sweep(parse_spec(TINY), str(out), progress=False)


def test_the_late_read_filter_drops_only_closed_loop_callbacks(monkeypatch):
    import asyncio
    import sys
    import types

    from phasespace.io import checkpoint

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoint._drop_late_read_callbacks()
    checkpoint._drop_late_read_callbacks()  # installed once
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        late = types.SimpleNamespace(exc_type=RuntimeError, exc_value=e, exc_traceback=e.__traceback__)
    other = types.SimpleNamespace(
        exc_type=RuntimeError, exc_value=RuntimeError("Event loop is closed"), exc_traceback=None
    )
    sys.unraisablehook(late)
    assert seen == []
    sys.unraisablehook(other)  # not from a callback on a closed loop: reported
    assert seen == [other]


def test_analyze_with_a_damaged_spec_or_foreign_params_is_a_one_line_error(tmp_path, capsys, finished):
    out = _copy(finished, tmp_path / "sweep")
    (out / "spec.json").write_text('{"name": "tin')
    assert main(["analyze", str(out)]) == 2
    _one_line_error(capsys, str(out / "spec.json"), "not readable JSON")
    os.remove(out / "spec.json")
    (out / "runs.csv").write_text("index,bucket\n5,x\n")
    assert main(["analyze", str(out)]) == 2
    _one_line_error(capsys, f"{BUCKET}.npz: networks [0, 1] are not rows of", "another sweep")
