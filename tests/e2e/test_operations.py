"""End to end: one sweep over ``operation = ["add", "sub", "mul"]`` — one program, one table,
per-operation families in phase.npz, the addition-only metrics NaN with their reason — and its
addition network identical to the engine's before the operation axis existed."""

import json
import sys

import numpy as np
import pytest

from phasespace import operations
from phasespace.cli import import_modules, main
from phasespace.io.params import list_bucket_params, load_bucket_params
from phasespace.io.store import load_sweep
from phasespace.sweep.reanalyze import stored_spec
from phasespace.tasks import operation_labels
from tests.helpers import run_spec

OPS = """
name = "ops"
[axes]
p = 13
d_model = 32
attention_rate = 1.0
lr = 3e-3
operation = ["add", "sub", "mul"]
[train]
steps = 200
chunk_steps = 100
log_every = 50
"""
# (measured: each of the three reaches 100 % training accuracy by step 76 / 89 / 93)

BEFORE = {
    "train_loss": 0.015436121,
    "test_loss": 3.1107063,
    "train_accuracy": 1.0,
    "test_accuracy": 0.4117647,
    "gradient_symmetricity": 0.78858966,
    "distance_irrelevance": 0.83731836,
    "distance_irrelevance_largest_wrong": 0.965288,
    "circularity": 0.49331737,
    "param_norm": 19.753094,
    "first_full_train_step": 76.0,
}
"""runs.csv of the same spec without the operation axis, written by the engine before it
(commit 56f424d): the addition network must not change."""


FAST = """
name = "ops_fast"
[axes]
p = 7
d_model = 8
attention_rate = 1.0
operation = ["add", "sub", "mul"]
[train]
steps = 20
chunk_steps = 20
log_every = 10
"""
"""The default suite's variant: a few steps (columns, NaN reasons, families; not trained)."""


@pytest.fixture(scope="module")
def ops_sweep(tmp_path_factory):
    return run_spec(tmp_path_factory.mktemp("ops"), OPS, name="ops")


@pytest.fixture(scope="module")
def fast_sweep(tmp_path_factory):
    return run_spec(tmp_path_factory.mktemp("ops_fast"), FAST, name="ops_fast")


@pytest.fixture(params=["fast", pytest.param("full", marks=pytest.mark.slow)])
def any_sweep(request):
    return request.getfixturevalue("fast_sweep" if request.param == "fast" else "ops_sweep")


def test_one_table_one_program(any_sweep):
    runs = load_sweep(str(any_sweep)).runs
    assert runs["operation"].tolist() == ["add", "sub", "mul"]
    assert len(set(runs["bucket"])) == 1  # one program for the three operations
    (params,) = list_bucket_params(str(any_sweep))
    b = load_bucket_params(params)
    p = int(runs["p"][0])
    want = [operation_labels(op, p) for op in ("add", "sub", "mul")]
    np.testing.assert_array_equal(b.hparams["labels"], np.stack(want)[np.asarray(b.index)])


@pytest.mark.slow
def test_all_trained_and_addition_unchanged(ops_sweep):
    runs = load_sweep(str(ops_sweep)).runs
    np.testing.assert_array_equal(runs["train_accuracy"], 1.0)
    assert np.all(runs["first_full_train_step"] < 150)
    for k, v in BEFORE.items():
        assert float(runs[k][0]) == np.float32(v), k


def test_addition_only_metrics_nan_with_reason(any_sweep):
    runs = load_sweep(str(any_sweep)).runs
    assert [set(d.split("|")) & {"not_addition"} for d in runs["degenerate"]] == [
        set(),
        {"not_addition"},
        {"not_addition"},
    ]
    assert runs["algorithm"][0] != "not-addition"
    assert runs["algorithm"][1:].tolist() == ["not-addition", "not-addition"]
    for k in ("distance_irrelevance", "distance_irrelevance_largest_wrong"):
        assert np.isfinite(runs[k][0]) and np.all(np.isnan(runs[k][1:])), k
    for k in ("gradient_symmetricity", "circularity", "test_accuracy"):
        assert np.all(np.isfinite(runs[k])), k
    fve = [c for c in runs if c.startswith("circle") and "_fve_" in c]
    assert fve and all(np.all(np.isnan(runs[c][1:])) for c in fve)


def test_phase_families_per_operation(any_sweep):
    phase = dict(np.load(any_sweep / "phase.npz"))
    assert "operation" in phase["family_axes"].tolist()
    assert phase["family__operation"].tolist() == ["add", "mul", "sub"]
    np.testing.assert_array_equal(phase["family__networks"], [1, 1, 1])
    # sub and mul are left out of every cell (no Clock/Pizza label), add is not
    np.testing.assert_array_equal(phase["binned__left_out__count"].sum(axis=(1, 2)), [0, 1, 1])
    stored = json.loads((any_sweep / "spec.json").read_text())
    assert stored["axes"]["operation"] == ["add", "sub", "mul"]


@pytest.mark.slow
def test_show_sub_network(ops_sweep, tmp_path):
    assert main(["show", str(ops_sweep), "--run", "1", "--out", str(tmp_path)]) == 0
    card = json.loads((tmp_path / "run1.json").read_text())
    assert card["info"]["operation"] == "sub" and card["metrics"]["algorithm"] == "not-addition"
    for fig in ("embedding", "logits", "fits", "training"):
        assert (tmp_path / f"run1_{fig}.png").stat().st_size > 10_000, fig


def test_unregistered_operation_refused_on_reanalysis(fast_sweep, tmp_path, capsys, monkeypatch):
    """A spec.json naming an operation this process has not registered: the one-line SpecError
    naming it and the registered ones; ``--import MODULE`` registers it (here checked on the
    spec alone: the stored parameters are those of sub)."""
    path = fast_sweep / "spec.json"
    stored = path.read_text()
    spec = json.loads(stored)
    spec["axes"]["operation"] = ["add", "a_plus_2b"]
    path.write_text(json.dumps(spec))
    try:
        assert main(["analyze", str(fast_sweep)]) == 2
        err = capsys.readouterr().err
        assert "unknown operation 'a_plus_2b'" in err and "registered operations: add, sub" in err
        assert main(["analyze", str(fast_sweep), "--import", "nonexistent_module_xyz"]) == 2
        assert "--import nonexistent_module_xyz: ModuleNotFoundError" in capsys.readouterr().err
        (tmp_path / "my_ops_e2e.py").write_text(
            "import phasespace\nphasespace.register_operation('a_plus_2b', lambda a, b, p: (a + 2 * b) % p)\n"
        )
        monkeypatch.chdir(tmp_path)
        monkeypatch.delitem(sys.modules, "my_ops_e2e", raising=False)
        import_modules(["my_ops_e2e"])
        assert stored_spec(str(fast_sweep)).axes["operation"] == ("add", "a_plus_2b")
    finally:
        path.write_text(stored)
        if "a_plus_2b" in operations.names():
            operations.unregister_operation("a_plus_2b")
