"""Operations on Z_p (phasespace.operations): label tables against direct NumPy / Python-integer
computations, the registration path and its errors, the spec's unknown-name error."""

import numpy as np
import pytest

from phasespace import operations
from phasespace.analysis import classify
from phasespace.defaults import ALGORITHMS
from phasespace.io.checkpoint import resume_fields, spec_diff
from phasespace.operations import OperationError, register_operation, unregister_operation
from phasespace.spec.parse import SpecError, parse_spec
from phasespace.tasks import Task, all_pairs, is_addition, operation_labels

FORMULAS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "x2_plus_y2": lambda a, b: a**2 + b**2,
    "x2_plus_xy_plus_y2": lambda a, b: a**2 + a * b + b**2,
    "x3_plus_xy": lambda a, b: a**3 + a * b,
}
"""The built-in operations, written independently (Python integers: no overflow)."""


def test_builtin_names():
    assert list(operations.BUILTIN) == list(FORMULAS)


@pytest.mark.parametrize("p", [5, 13, 23])
@pytest.mark.parametrize("name", list(FORMULAS))
def test_builtin_tables_match_numpy(name, p):
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")  # row a·p + b
    want = np.mod(FORMULAS[name](a.astype(object), b.astype(object)), p).astype(np.int64).ravel()
    got = operation_labels(name, p)
    assert got.dtype == np.int32 and got.shape == (p * p,)
    np.testing.assert_array_equal(got, want)
    tokens, labels = all_pairs(Task(p), name)
    np.testing.assert_array_equal(labels, want)
    np.testing.assert_array_equal(FORMULAS[name](tokens[:, 0].astype(object), tokens[:, 1]) % p, want)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_no_int64_overflow_at_the_largest_p(name):
    """Reduced after every product: exact up to p < 2³¹ (here the prime 2³¹ − 1)."""
    p = 2**31 - 1
    a = np.asarray([p - 1, p - 2, 123456789, 0], np.int64)
    b = np.asarray([p - 1, p - 3, p - 1, p - 1], np.int64)
    got = operations.BUILTIN[name].fn(a, b, p)
    want = [FORMULAS[name](int(x), int(y)) % p for x, y in zip(a, b, strict=True)]
    assert got.tolist() == want


def test_is_addition():
    p = 7
    rows = np.stack([operation_labels(op, p) for op in ("add", "sub", "mul")])
    assert is_addition(rows, p).tolist() == [True, False, False]


@pytest.fixture
def a_plus_2b():
    register_operation("a_plus_2b", lambda a, b, p: (a + 2 * b) % p, description="(a + 2b) mod p")
    yield "a_plus_2b"
    unregister_operation("a_plus_2b")


def test_register_operation(a_plus_2b):
    p = 11
    a, b = np.divmod(np.arange(p * p), p)
    np.testing.assert_array_equal(operation_labels(a_plus_2b, p), (a + 2 * b) % p)
    assert operations.names()[-1] == a_plus_2b
    spec = parse_spec({"name": "x", "axes": {"p": 11, "operation": ["add", a_plus_2b]}})
    assert spec.axes["operation"] == ("add", a_plus_2b)
    with pytest.raises(OperationError, match="already registered"):
        register_operation(a_plus_2b, lambda a, b, p: a % p)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda a, b, p: ((a + b) % p)[:-1], r"shape \(48,\); expected one label per pair, \(49,\)"),
        (lambda a, b, p: (a + b) / 2.0, "dtype float64; expected integer labels"),
        (lambda a, b, p: a + b, r"labels in \[0, 12\]; expected \[0, 7\)"),
        (lambda a, b, p: a - b, r"labels in \[-6, 6\]"),
        (lambda a, b, p: 1 / 0, "raised ZeroDivisionError"),
        (42, "is not callable"),
    ],
)
def test_register_rejects_bad_functions(fn, match):
    with pytest.raises(OperationError, match=match):
        register_operation("bad_op", fn)
    assert "bad_op" not in operations.names()


def test_register_rejects_bad_names():
    with pytest.raises(OperationError, match="built-in"):
        register_operation("add", lambda a, b, p: (a + b) % p)
    with pytest.raises(OperationError, match=r"must match"):
        register_operation("a+b", lambda a, b, p: (a + b) % p)


def test_checked_at_each_use():
    """A function valid at the registration's p but not at another is caught when used."""
    register_operation("small_only", lambda a, b, p: np.minimum(a + b, 12) % p)
    try:
        assert operation_labels("small_only", 7).max() < 7
        operation_labels("small_only", 11)  # fine too (the % p)
        register_operation("square_ok", lambda a, b, p: (a * b) % p if p < 10 else (a * b), replace=True)
        with pytest.raises(OperationError, match="p=11"):
            operation_labels("square_ok", 11)
    finally:
        unregister_operation("small_only")
        unregister_operation("square_ok")


def test_unknown_operation_is_a_spec_error():
    with pytest.raises(SpecError) as e:
        parse_spec({"name": "x", "axes": {"operation": ["add", "div"]}})
    msg = str(e.value)
    assert "axes.operation[1]" in msg and "'div'" in msg
    assert "add, sub, mul, x2_plus_y2, x2_plus_xy_plus_y2, x3_plus_xy" in msg and "--import" in msg
    with pytest.raises(SpecError, match="cannot be sampled"):
        parse_spec({"name": "x", "axes": {"operation": {"dist": "uniform", "low": 0, "high": 1}}})
    assert parse_spec({"name": "x"}).axes["operation"] == "add"


def test_resume_fields_of_a_spec_stored_before_the_operation_axis():
    new = parse_spec({"name": "x", "axes": {"p": 7}})
    old = new.to_dict()
    del old["axes"]["operation"]
    assert spec_diff(resume_fields(old), resume_fields(new)) == []  # compares as addition
    old["axes"]["operation"] = "sub"
    assert spec_diff(resume_fields(old), resume_fields(new)) == [
        "axes.operation: 'sub' (stored) ≠ 'add' (this spec)"
    ]


def test_classification_of_other_operations():
    """not_addition in ``degenerate`` → "not-addition", left out of the phase statistics like a
    collapsed network; collapsed/diverged still win; addition rows are classified as before."""
    rows = [
        {"circularity": 1.0, "gradient_symmetricity": 0.99, "distance_irrelevance": 0.1, "degenerate": ""},
        {"circularity": 1.0, "gradient_symmetricity": 0.99, "distance_irrelevance": np.nan,
         "degenerate": "not_addition"},
        {"circularity": 0.2, "gradient_symmetricity": 0.5, "distance_irrelevance": np.nan,
         "degenerate": "constant_logits|not_addition"},
        {"circularity": 1.0, "gradient_symmetricity": 0.5, "distance_irrelevance": np.nan,
         "degenerate": "not_addition", "collapsed": True},
    ]  # fmt: skip
    classify.classify_rows(rows)
    assert [r["algorithm"] for r in rows] == ["pizza", "not-addition", "not-addition", "collapsed"]
    assert [r["circular"] for r in rows] == [True, True, False, True]
    assert rows[1]["algorithm_code"] == ALGORITHMS.index("not-addition") == len(ALGORITHMS) - 1
    runs = {k: np.asarray([r.get(k, False) for r in rows]) for k in ("degenerate", "collapsed")}
    assert classify.left_out(runs).tolist() == [False, True, True, True]
    code = classify.algorithm([1.0, 1.0], [0.99, 0.5], [0.1, 0.9], addition=[True, False])
    assert [ALGORITHMS[c] for c in code] == ["pizza", "not-addition"]


def test_operation_invalid_at_the_sweeps_p_claims_no_directory(tmp_path, capsys):
    """Refused before anything is written: the run leaves neither its directory nor runs/."""
    from phasespace.cli import main

    register_operation("late_bad", lambda a, b, p: (a + b) % p if p < 10 else a + b)
    try:
        spec = tmp_path / "lb.toml"
        spec.write_text('name = "lb"\n[axes]\np = 13\nd_model = 8\nn_heads = 2\noperation = "late_bad"\n')
        out = tmp_path / "runs" / "lb"
        assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "late_bad" in err and "p=13" in err and err.count("\n") == 1
        assert not out.exists() and not out.parent.exists()
    finally:
        unregister_operation("late_bad")
