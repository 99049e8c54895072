"""The reference's minibatch and early-stop options in a spec (``[train] batch_size``,
``shuffle``, ``early_stop``): refusals naming field, value and what is allowed; the recipe and
the resolved spec; specs stored before the options existed still compare equal."""

from __future__ import annotations

import pytest

from phasespace.io.checkpoint import resume_fields, spec_diff
from phasespace.spec.networks import Recipe
from phasespace.spec.parse import SpecError, parse_spec, spec_from_dict


def _spec(**train):
    return {"axes": {"p": 7, "d_model": 8, "n_heads": 2}, "train": {"steps": 20, **train}}


@pytest.mark.parametrize(
    ("train", "fragments"),
    [
        ({"batch_size": 0}, ["train.batch_size=0", '"full"', "integer ≥ 1"]),
        ({"batch_size": "half"}, ["train.batch_size='half'", '"full"']),
        ({"batch_size": True}, ["train.batch_size=True", "integer ≥ 1"]),
        ({"batch_size": 2.5}, ["train.batch_size=2.5", "integer ≥ 1"]),
        ({"shuffle": "yes", "batch_size": 4}, ["train.shuffle='yes'", "true or false"]),
        ({"shuffle": True}, ["train.shuffle=true", "needs minibatches", "batch_size"]),
        ({"early_stop": [1.5, 2]}, ["train.early_stop=[1.5, 2]", "a in [0, 1]", "b ≥ 1"]),
        ({"early_stop": [0.9]}, ["train.early_stop=[0.9]", "false (off) or [a, b]"]),
        ({"early_stop": [0.9, 0]}, ["train.early_stop=[0.9, 0]", "b ≥ 1"]),
        ({"early_stop": [0.9, 2.5]}, ["train.early_stop=[0.9, 2.5]", "b ≥ 1"]),
        ({"early_stop": True}, ["train.early_stop=True", "false (off)"]),
        ({"early_stop": "on"}, ["train.early_stop='on'", "false (off)"]),
        ({"batchsize": 4}, ["'batchsize'", "did you mean 'batch_size'"]),
    ],
)
def test_bad_minibatch_and_early_stop_options_are_refused(train, fragments):
    with pytest.raises(SpecError) as e:
        parse_spec(_spec(**train))
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def test_options_reach_the_recipe_and_the_resolved_spec():
    default = parse_spec(_spec())
    assert (default.recipe.batch_size, default.recipe.shuffle, default.recipe.early_stop) == (
        None,
        False,
        None,
    )
    assert default.recipe == Recipe(steps=20)
    s = parse_spec(_spec(batch_size=16, shuffle=True, early_stop=[1, 3]))
    assert s.recipe == Recipe(steps=20, batch_size=16, shuffle=True, early_stop=(1.0, 3))
    r = s.resolved()
    assert (r["train"]["batch_size"], r["train"]["shuffle"], r["train"]["early_stop"]) == (16, True, [1.0, 3])
    rec = r["resolved"]["recipes"]["transformer"]
    assert (rec["batch_size"], rec["shuffle"], rec["early_stop"]) == (16, True, (1.0, 3))
    assert resume_fields(spec_from_dict(r)) == resume_fields(s)
    assert spec_diff(resume_fields(default), resume_fields(s)) == [
        "train.batch_size: 'full' (stored) ≠ 16 (this spec)",
        "train.early_stop: False (stored) ≠ [1.0, 3] (this spec)",
        "train.shuffle: False (stored) ≠ True (this spec)",
    ]


def test_a_spec_stored_before_the_options_compares_as_their_defaults():
    default = parse_spec(_spec())
    old = {
        k: v
        for k, v in resume_fields(default).items()
        if k not in ("train.batch_size", "train.shuffle", "train.early_stop")
    }
    assert len(old) == len(resume_fields(default)) - 3
    assert spec_diff(old, resume_fields(default)) == []
    minibatch = parse_spec(_spec(batch_size=8))
    assert spec_diff(old, resume_fields(minibatch)) == ["train.batch_size: 'full' (stored) ≠ 8 (this spec)"]
