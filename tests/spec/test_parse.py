"""Refusals with reasons (issue 5): bad specs before any compute, reference checkpoints with wrong
keys or shapes (tests/io/test_reference.py), and the atomic writers' guarantees (tests/io/test_store.py)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from phasespace.cli import main
from phasespace.io.checkpoint import resume_fields
from phasespace.spec.parse import SpecError, parse_spec, spec_from_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spec(axes=None, train=None, analysis=None, sampling=None, **top):
    raw = {"axes": {"p": 7, "d_model": 8, "n_heads": 2, **(axes or {})}, **top}
    for k, v in (("train", train), ("analysis", analysis), ("sampling", sampling)):
        if v is not None:
            raw[k] = v
    return raw


# (spec, expected fragments of the message: the field, the value and what is allowed)
BAD_SPECS = [
    (spec({"p": 9}), ["axes.p=9", "prime ≥ 5"]),
    (spec({"p": 2}), ["axes.p=2", "prime ≥ 5"]),
    (spec({"p": [7, 15]}), ["axes.p[1]=15", "prime ≥ 5"]),
    (spec({"p": 7.0}), ["axes.p=7.0", "must be an integer"]),
    (spec({"attention_rate": 1.5}), ["axes.attention_rate=1.5", "in [0, 1]"]),
    (spec({"attention_rate": [0.0, -0.1]}), ["axes.attention_rate[1]=-0.1", "in [0, 1]"]),
    (spec({"attention_rate": math.nan}), ["axes.attention_rate=nan", "finite number"]),
    (spec({"d_model": 2, "n_heads": 4}), ["axes.d_model=2", "≥ n_heads=4"]),
    (spec({"d_model": 0}), ["axes.d_model=0", "positive width"]),
    (spec({"n_heads": 0}), ["axes.n_heads=0", "≥ 1"]),
    (spec({"n_layers": 0}), ["axes.n_layers=0", "[1, 8]"]),
    (spec({"train_fraction": 1.0}), ["axes.train_fraction=1.0", "in (0, 1)"]),
    (spec({"train_fraction": 0}), ["axes.train_fraction=0", "in (0, 1)"]),
    (spec({"p": 5, "train_fraction": 0.03}), ["axes.train_fraction=0.03", "p=5", "0 of 25", "non-empty"]),
    (
        spec({"p": 5, "train_fraction": {"dist": "uniform", "low": 0.03, "high": 0.5}}, sampling={"n": 2}),
        ["axes.train_fraction=0.03", "p=5", "non-empty"],
    ),
    (spec({"lr": 0.0}), ["axes.lr=0.0", "> 0"]),
    (spec({"lr": math.inf}), ["axes.lr=inf", "finite number"]),
    (spec({"weight_decay": -1.0}), ["axes.weight_decay=-1.0", "≥ 0"]),
    (spec({"seed": -1}), ["axes.seed=-1", "[0, 2**32)"]),
    (spec({"seed": [0, 1, 0]}), ["axes.seed=[0, 1, 0]", "distinct"]),
    (spec({"seed": []}), ["axes.seed=[]", "at least one value"]),
    (spec({"act": "swish"}), ["axes.act='swish'", "relu", "tanh"]),
    (spec({"diff_vocab": "yes"}), ["axes.diff_vocab='yes'", "true or false"]),
    (spec({"atention_rate": 0.5}), ["'atention_rate'", "did you mean 'attention_rate'"]),
    (spec(train={"step": 10}), ["train", "'step'", "did you mean 'steps'"]),
    (spec(trian={"steps": 10}), ["'trian'", "did you mean 'train'"]),
    (spec(train={"steps": 0}), ["train.steps=0", "positive integer"]),
    (spec(train={"steps": -5}), ["train.steps=-5", "positive integer"]),
    (spec(train={"steps": 1.5}), ["train.steps=1.5", "positive integer"]),
    (spec(train={"chunk_steps": 0}), ["train.chunk_steps=0", "positive integer"]),
    (spec(train={"checkpoint_every": 0}), ["train.checkpoint_every=0", "positive integer"]),
    (spec(train={"log_every": True}), ["train.log_every=True", "positive integer"]),
    (spec(train={"warmup_steps": -1}), ["train.warmup_steps=-1", "≥ 0"]),
    (spec(train={"precision": "fp16"}), ["train.precision='fp16'", "float32"]),
    (spec(train={"b1": 1.0}), ["train.b1=1.0", "[0, 1)"]),
    (spec(train={"eps": 0}), ["train.eps=0", "> 0"]),
    (spec(train={"eps": math.inf}), ["train.eps=inf", "finite number > 0"]),
    (spec(analysis={"n_triples": 0}), ["analysis.n_triples=0", "positive integer"]),
    (spec(analysis={"n_triples": 400}), ["analysis.n_triples=400", "≤ p³ = 343"]),
    (spec(sampling={"n": 3}), ["sampling.n=3", "no axis is a distribution"]),
    (spec({"lr": {"dist": "normal", "low": 0, "high": 1}}, sampling={"n": 2}), ["axes.lr.dist='normal'"]),
    (spec({"lr": {"dist": "uniform", "low": 1, "high": 1}}, sampling={"n": 2}), ["axes.lr", "must be <"]),
    (spec({"p": {"dist": "randint", "low": 3, "high": 9}}, sampling={"n": 2}), ["axes.p", "as a list"]),
    (spec({"lr": {"dist": "randint", "low": 1, "high": 3}}, sampling={"n": 2}), ["randint", "integer axes"]),
    (spec({"lr": {"dist": "uniform", "low": 0.1, "high": 1}}), ["sampling.n=0", "must be ≥ 1"]),
    (spec(name="a/b"), ["name='a/b'", "one path component"]),
    ({"axes": 3}, ["axes=3", "must be a table"]),
]


@pytest.mark.parametrize(("raw", "fragments"), BAD_SPECS, ids=[str(i) for i in range(len(BAD_SPECS))])
def test_bad_spec_is_refused_naming_field_value_and_allowed(raw, fragments):
    with pytest.raises(SpecError) as e:
        parse_spec(raw)
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def test_good_spec_is_accepted_with_defaults():
    s = parse_spec(spec({"attention_rate": [0.0, 1.0]}, train={"steps": 50, "checkpoint_every": 25}))
    assert s.train["checkpoint_every"] == 25 and s.train["chunk_steps"] == 500
    assert s.recipe.steps == 50
    # checkpoint_every and chunk_steps do not enter the fields a resume must agree on
    t = parse_spec(
        spec({"attention_rate": [0.0, 1.0]}, train={"steps": 50, "checkpoint_every": 7, "chunk_steps": 9})
    )
    assert resume_fields(s) == resume_fields(t)


def test_resolved_spec_records_each_family_recipe_and_the_split_seed():
    """spec.json (SweepSpec.resolved): b2 and warmup_steps of each model family, data_seed −1
    spelled "seed"; the stored dict reads back to the same spec (same resume fields)."""
    one = parse_spec(spec(train={"steps": 50}))
    r = one.resolved()
    assert r["train"]["b2"] is None and r["axes"]["data_seed"] == -1  # as given: family default
    assert r["resolved"]["recipes"] == {
        "transformer": {
            "steps": 50,
            "b1": 0.9,
            "b2": 0.98,
            "eps": 1e-8,
            "warmup_steps": 10,
            "precision": "float32",
            "fast": True,
            "batch_size": None,
            "shuffle": False,
            "early_stop": None,
        }
    }
    assert r["resolved"]["data_seed"] == "seed"
    mixed = parse_spec(
        spec({"model": ["transformer", "mlp_alpha"], "data_seed": [-1, 3]}, train={"warmup_steps": 5})
    )
    rec = mixed.resolved()["resolved"]
    assert sorted(rec["recipes"]) == ["mlp_alpha", "transformer"]
    assert (rec["recipes"]["transformer"]["b2"], rec["recipes"]["transformer"]["warmup_steps"]) == (0.98, 5)
    assert (rec["recipes"]["mlp_alpha"]["b2"], rec["recipes"]["mlp_alpha"]["warmup_steps"]) == (0.999, 5)
    assert rec["data_seed"] == ["seed", 3]
    assert parse_spec(spec({"data_seed": 7})).resolved()["resolved"]["data_seed"] == 7
    for s in (one, mixed):
        assert resume_fields(spec_from_dict(s.resolved())) == resume_fields(s)
        assert resume_fields(spec_from_dict(s.to_dict())) == resume_fields(s)
    # derived, so not a table of a spec file
    with pytest.raises(SpecError, match="unknown key 'resolved'"):
        parse_spec({**spec(), "resolved": {}})


def _write(tmp_path, text, name="bad.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_cli_prints_the_error_and_exits_nonzero_before_compute(tmp_path, capsys, monkeypatch):
    import phasespace.sweep.run

    def no_compute(*a, **k):
        raise AssertionError("compute started")

    monkeypatch.setattr(phasespace.sweep.run, "train_bucket", no_compute)
    bad = _write(tmp_path, "[axes]\np = 9\n")
    out = tmp_path / "out"
    assert main(["run", bad, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "phasespace: error: axes.p=9: the modulus p must be a prime ≥ 5" in err
    assert not out.exists()
    bad = _write(tmp_path, "[axes\np = 7\n")
    assert main(["run", bad, "--out", str(out)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_console_script_exit_status(tmp_path):
    bad = _write(tmp_path, '[axes]\np = 7\nd_model = 8\nn_heads = 2\n[train]\nprecision = "fp16"\n')
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-m", "phasespace.cli", "run", bad, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2
    assert "train.precision='fp16': must be one of" in r.stderr
    assert "Traceback" not in r.stderr


def test_families_without_heads_collapse_the_heads_axis():
    """MLP models and the Linearformer have no heads: n_heads = [2, 4] gives one network (and one
    bucket) per combination of their other axes, and two per combination for the transformer."""
    from phasespace.population.buckets import plan_buckets
    from phasespace.spec.expand import expand

    s = parse_spec(
        spec({"model": ["transformer", "mlp_beta", "linearformer"], "n_heads": [2, 4], "seed": [0, 1]})
    )
    nets = expand(s)
    count = {
        m: sum(n.values["model"] == m for n in nets) for m in ("transformer", "mlp_beta", "linearformer")
    }
    assert count == {"transformer": 4, "mlp_beta": 2, "linearformer": 2}
    keys = [b.key for b in plan_buckets(nets)]
    assert len(keys) == len(set(keys)) == 4
