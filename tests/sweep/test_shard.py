"""Shards without training (issue 14): ``--shard`` values, SLURM job-array variables, the FLOP
balance of :func:`phasespace.sweep.shard.assign_shards` and the shard record of a spec."""

from __future__ import annotations

import json
import random
import re

import pytest

from phasespace.io import store
from phasespace.io.checkpoint import ResumeError, check_sweep_dir
from phasespace.spec.expand import expand
from phasespace.spec.parse import parse_spec
from phasespace.sweep.shard import (
    Shard,
    ShardError,
    assign_shards,
    network_flops,
    parse_shard,
    read_stored_spec,
    shard_spec,
    slurm_shard,
    sweep_fingerprint,
)

FOUR = {
    "name": "four",
    "axes": {"p": 7, "d_model": [8, 16], "n_heads": 2, "attention_rate": 1.0, "seed": [0, 1]},
    "train": {"steps": 100},
}

WIDE = {
    "name": "wide",
    "axes": {
        "p": [7, 11],
        "n_layers": [1, 2],
        "d_model": {"dist": "log2uniform", "low": 3, "high": 7},
        "attention_rate": {"dist": "uniform", "low": 0.0, "high": 1.0},
    },
    "sampling": {"n": 15, "seed": 3},
    "train": {"steps": 200},
}


@pytest.mark.parametrize(
    ("text", "want"), [("0/1", Shard(0, 1)), ("3/4", Shard(3, 4)), (" 1 / 2 ", Shard(1, 2))]
)
def test_parse_shard(text, want):
    assert parse_shard(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2/2", "I=2 must be in 0 … 1 (N=2)"),
        ("-1/2", "I=-1 must be in 0 … 1"),
        ("1/0", "N=0 must be ≥ 1"),
        ("0/-3", "N=-3 must be ≥ 1"),
        ("x", "expected I/N"),
        ("1/2/3", "expected I/N"),
        ("1.5/2", "expected I/N"),
        ("", "expected I/N"),
        ("1/", "expected I/N"),
    ],
)
def test_parse_shard_refuses(text, message):
    with pytest.raises(ShardError, match=re.escape(message)) as e:
        parse_shard(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(2, 4)),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"}, Shard(0, 1)),
        # --array=1-4: COUNT with MIN = 1
        (
            {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"},
            Shard(3, 4),
        ),
        # COUNT missing: MAX − MIN + 1 tasks, I = ID − MIN
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "6"}, Shard(2, 4)),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "0"}, Shard(0, 1)),
        # --array=0-6:2
        (
            {
                "SLURM_ARRAY_TASK_ID": "4",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_MAX": "6",
                "SLURM_ARRAY_TASK_STEP": "2",
            },
            Shard(2, 4),
        ),
    ],
)
def test_slurm_shard(env, want):
    assert slurm_shard(env) == want
    assert parse_shard("auto", env) == want


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SLURM_ARRAY_TASK_ID is not set"),
        ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT is not set, nor SLURM_ARRAY_TASK_MIN"),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "0"}, "SLURM_ARRAY_TASK_COUNT is not set"),
        ({"SLURM_ARRAY_TASK_ID": "one", "SLURM_ARRAY_TASK_COUNT": "2"}, "SLURM_ARRAY_TASK_ID='one' is not"),
        ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"}, "not one of a range of 4"),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "0"}, "no tasks"),
        (
            {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"},
            "not one of a range",
        ),
    ],
)
def test_slurm_shard_refuses(env, message):
    with pytest.raises(ShardError, match=re.escape(message)) as e:
        slurm_shard(env)
    assert "\n" not in str(e.value)


def test_assignment_pinned():
    """The 4-network sweep of the end-to-end test: one network of each width per shard (pinned:
    the same network goes to the same shard on every machine and version of this rule)."""
    spec = parse_spec(FOUR)
    nets = expand(spec)
    assert [n.values["d_model"] for n in nets] == [8, 8, 16, 16]
    assert assign_shards(spec, nets, 2) == [0, 1, 0, 1]
    assert assign_shards(spec, nets, 1) == [0, 0, 0, 0]
    assert assign_shards(spec, nets, 4) == [2, 3, 0, 1]


@pytest.mark.parametrize("count", [2, 3, 5, 8])
def test_assignment_balanced_and_deterministic(count):
    spec = parse_spec(WIDE)
    nets = expand(spec)
    assert len(nets) == 60
    costs = {n.index: network_flops(spec, n) for n in nets}
    assert len(set(costs.values())) > 20  # widths, p and depths differ: a real balancing problem
    owner = assign_shards(spec, nets, count)
    totals = [sum(costs[n.index] for n, o in zip(nets, owner, strict=True) if o == k) for k in range(count)]
    assert max(totals) - min(totals) <= max(costs.values()), (totals, max(costs.values()))
    assert sorted(set(owner)) == list(range(count))
    # deterministic from the spec alone: a fresh expansion, in any order, gives the same shards
    again = expand(parse_spec(json.loads(json.dumps(WIDE))))
    random.Random(count).shuffle(again)
    by_index = dict(zip((n.index for n in again), assign_shards(spec, again, count), strict=True))
    assert [by_index[n.index] for n in nets] == owner
    # the shards are disjoint and cover the sweep
    parts = [shard_spec(spec, Shard(k, count))[1] for k in range(count)]
    got = sorted(n.index for p in parts for n in p)
    assert got == list(range(len(nets)))
    for k, p in enumerate(parts):
        assert [n.index for n in p] == [n.index for n, o in zip(nets, owner, strict=True) if o == k]


def test_flops_scale_with_width_and_steps():
    spec = parse_spec(FOUR)
    small, _, big, _ = expand(spec)
    assert network_flops(spec, big) > network_flops(spec, small) > 0
    longer = parse_spec({**FOUR, "train": {"steps": 300}})
    assert network_flops(longer, small) == 3 * network_flops(spec, small)


def test_sweep_fingerprint():
    """Shards of one sweep may differ in name, chunking, checkpointing, memory and phase binning
    (how and where they run), never in what they compute."""
    fp = sweep_fingerprint(parse_spec(FOUR))
    same = {
        **FOUR,
        "name": "other",
        "train": {**FOUR["train"], "chunk_steps": 7, "checkpoint_every": 3, "memory_limit": "1GiB"},
        "phase": {"alpha_bins": 4},
    }
    assert sweep_fingerprint(parse_spec(same)) == fp
    for changed in (
        {**FOUR, "axes": {**FOUR["axes"], "lr": 3e-3}},
        {**FOUR, "train": {**FOUR["train"], "log_every": 7}},
        {**FOUR, "train": {**FOUR["train"], "steps": 101}},
        {**FOUR, "analysis": {"n_triples": 10}},
    ):
        assert sweep_fingerprint(parse_spec(changed)) != fp


def test_too_many_shards_refused():
    with pytest.raises(ShardError, match="the sweep has 4 networks, fewer than 5 shards"):
        shard_spec(parse_spec(FOUR), Shard(0, 5))


def test_shard_record_and_resume_refusals(tmp_path):
    spec = parse_spec(FOUR)
    s1, nets = shard_spec(spec, Shard(1, 2))
    record = s1.to_dict()["shard"]
    assert record["index"] == 1 and record["count"] == 2 and record["networks"] == [1, 3]
    assert record["fingerprint"] == sweep_fingerprint(spec) and record["sweep_networks"] == 4
    assert record["flops"] == sum(network_flops(spec, n) for n in nets)
    assert s1.sweep == spec
    d = tmp_path / "s1"
    d.mkdir()
    store.write_json(str(d / "spec.json"), s1.to_dict())
    back, rec = read_stored_spec(str(d))
    assert rec == record and back == s1
    assert check_sweep_dir(str(d), s1)  # the same shard resumes
    s0, _ = shard_spec(spec, Shard(0, 2))
    with pytest.raises(ResumeError, match=r"shard\.index: 1 \(stored\) ≠ 0"):
        check_sweep_dir(str(d), s0)
    with pytest.raises(ResumeError, match=r"shard\.count: 2 \(stored\) ≠ '\(absent\)'"):
        check_sweep_dir(str(d), spec)  # the whole sweep into a shard's directory


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2/2", "--shard '2/2': the shard index I=2 must be in 0 … 1 (N=2)"),
        ("junk", "--shard 'junk': expected I/N"),
        ("auto", "--shard auto: SLURM_ARRAY_TASK_ID is not set"),
        ("0/9", "--shard 0/9: the sweep has 4 networks, fewer than 9 shards"),
    ],
)
def test_cli_refuses_bad_shard_before_compute(tmp_path, monkeypatch, capsys, value, message):
    from phasespace.cli import main

    for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(k, raising=False)
    spec = tmp_path / "four.toml"
    spec.write_text('name = "four"\n[axes]\np = 7\nd_model = [8, 16]\nn_heads = 2\nseed = [0, 1]\n')
    out = tmp_path / "out"
    assert main(["run", str(spec), f"--shard={value}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("phasespace: error: --shard") and "\n" not in err
    assert message in err
    assert not out.exists()  # refused before the directory (and any compute)
