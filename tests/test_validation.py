"""Refusals with reasons (issue 5): bad specs before any compute, reference checkpoints with wrong
keys or shapes, and the atomic writers' guarantees."""

from __future__ import annotations

import math
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest

from phasespace.cli import main
from phasespace.io import store
from phasespace.io.reference import (
    CheckpointError,
    arch_from_reference_config,
    load_reference_transformer,
    transformer_params_from_state_dict,
)
from phasespace.models.transformer import TransformerArch
from phasespace.spec.parse import SpecError, parse_spec, spec_from_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(os.path.dirname(REPO), "shared", "reference")
if not os.path.isdir(REFERENCE):
    REFERENCE = "/work/shared/reference"


def spec(axes=None, train=None, analysis=None, sampling=None, **top):
    raw = {"axes": {"p": 7, "d_model": 8, "n_heads": 2, **(axes or {})}, **top}
    for k, v in (("train", train), ("analysis", analysis), ("sampling", sampling)):
        if v is not None:
            raw[k] = v
    return raw


# (spec, expected fragments of the message: the field, the value and what is allowed)
BAD_SPECS = [
    (spec({"p": 9}), ["axes.p=9", "prime ≥ 3"]),
    (spec({"p": 2}), ["axes.p=2", "prime ≥ 3"]),
    (spec({"p": [7, 15]}), ["axes.p[1]=15", "prime ≥ 3"]),
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
    (spec({"p": 3, "train_fraction": 0.1}), ["axes.train_fraction=0.1", "p=3", "0 of 9", "non-empty"]),
    (
        spec({"p": 3, "train_fraction": {"dist": "uniform", "low": 0.05, "high": 0.5}}, sampling={"n": 2}),
        ["axes.train_fraction=0.05", "p=3", "non-empty"],
    ),
    (spec({"lr": 0.0}), ["axes.lr=0.0", "> 0"]),
    (spec({"lr": math.inf}), ["axes.lr=inf", "finite number"]),
    (spec({"weight_decay": -1.0}), ["axes.weight_decay=-1.0", "≥ 0"]),
    (spec({"seed": -1}), ["axes.seed=-1", "[0, 2**32)"]),
    (spec({"seed": [0, 1, 0]}), ["axes.seed=[0, 1, 0]", "distinct"]),
    (spec({"seed": []}), ["axes.seed=[]", "at least one value"]),
    (spec({"act": "tanh"}), ["axes.act='tanh'", "relu"]),
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
    (spec(name="a/b"), ["name='a/b'", "without slashes"]),
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
    # checkpoint_every, chunk_steps and log_every do not enter the result fingerprint
    t = parse_spec(spec({"attention_rate": [0.0, 1.0]}, train={"steps": 50, "checkpoint_every": 7}))
    assert s.fingerprint() == t.fingerprint()


def test_resolved_spec_records_each_family_recipe_and_the_split_seed():
    """spec.json (SweepSpec.resolved): b2 and warmup_steps of each model family, data_seed −1
    spelled "seed"; the stored dict reads back to the same spec (same fingerprint)."""
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
        assert spec_from_dict(s.resolved()).fingerprint() == s.fingerprint()
        assert spec_from_dict(s.to_dict()).fingerprint() == s.fingerprint()
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
    assert "phasespace: error: axes.p=9: the modulus p must be a prime ≥ 3" in err
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


# --------------------------------------------------------------------------------------------- #
# Reference checkpoints with wrong keys or shapes

ARCH = TransformerArch(p=7, d_model=8, n_layers=1, n_heads=2, act="relu", diff_vocab=False, eqn_sign=False)


def _state_dict(arch):
    d, h, dh, dm, v = arch.d_model, arch.n_heads, arch.d_head, arch.d_mlp, arch.vocab
    shapes = {
        "embed.W_E": (d, v),
        "pos_embed.W_pos": (arch.n_ctx, d),
        "unembed.W_U": (d, v),
        "blocks.0.attn.W_Q": (h, dh, d),
        "blocks.0.attn.W_K": (h, dh, d),
        "blocks.0.attn.W_V": (h, dh, d),
        "blocks.0.attn.W_O": (d, h * dh),
        "blocks.0.attn.mask": (arch.n_ctx, arch.n_ctx),
        "blocks.0.mlp.W_in": (dm, d),
        "blocks.0.mlp.b_in": (dm,),
        "blocks.0.mlp.W_out": (d, dm),
        "blocks.0.mlp.b_out": (d,),
    }
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_reference_state_dict_roundtrip_is_accepted():
    sd = _state_dict(ARCH)
    params = transformer_params_from_state_dict(sd, ARCH)["params"]
    np.testing.assert_array_equal(params["W_E"], sd["embed.W_E"])
    np.testing.assert_array_equal(params["blocks_0"]["W_out"], sd["blocks.0.mlp.W_out"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda sd: sd.pop("blocks.0.mlp.W_in"),
            "missing key 'blocks.0.mlp.W_in': expected shape (32, 8), found none",
        ),
        (
            lambda sd: sd.__setitem__("embed.W_E", np.zeros((8, 6), np.float32)),
            "key 'embed.W_E': expected shape (8, 7), found (8, 6)",
        ),
        (
            lambda sd: sd.__setitem__("blocks.0.attn.W_Q", np.zeros((2, 4, 9), np.float32)),
            "key 'blocks.0.attn.W_Q': expected shape (2, 4, 8), found (2, 4, 9)",
        ),
        (
            lambda sd: sd.__setitem__("blocks.1.attn.W_Q", np.zeros(3)),
            "unexpected keys ['blocks.1.attn.W_Q']",
        ),
    ],
    ids=["missing", "shape-2d", "shape-3d", "unexpected"],
)
def test_reference_state_dict_with_wrong_keys_or_shapes_is_refused(edit, message):
    sd = _state_dict(ARCH)
    edit(sd)
    with pytest.raises(CheckpointError) as e:
        transformer_params_from_state_dict(sd, ARCH)
    assert message in str(e.value)


def test_reference_config_refusals():
    base = {"C": 7, "d_model": 8, "n_layers": 1, "n_heads": 2, "act_fn": "ReLU"}
    assert arch_from_reference_config(base) == ARCH
    with pytest.raises(CheckpointError, match="model_type='A': not a transformer checkpoint"):
        arch_from_reference_config({**base, "model_type": "A"})
    with pytest.raises(CheckpointError, match="act_fn='Tanh': expected 'ReLU' or 'GeLU'"):
        arch_from_reference_config({**base, "act_fn": "Tanh"})


@pytest.mark.skipif(not os.path.isdir(REFERENCE), reason="reference checkpoints not available")
def test_reference_file_with_truncated_weight_is_refused(tmp_path):
    import json

    cfg_src = os.path.join(REFERENCE, "p99zdpze5l.json")
    with np.load(os.path.join(REFERENCE, "p99zdpze5l.npz")) as z:
        sd = {k: z[k] for k in z.files}
    sd["unembed.W_U"] = sd["unembed.W_U"][:, :-1]
    np.savez(tmp_path / "bad.npz", **sd)
    with open(cfg_src) as f:
        cfg = json.load(f)
    (tmp_path / "bad.json").write_text(json.dumps(cfg))
    d = int(cfg["d_model"])
    with pytest.raises(
        CheckpointError, match=re.escape(f"key 'unembed.W_U': expected shape ({d}, 59), found ({d}, 58)")
    ):
        load_reference_transformer(str(tmp_path / "bad.npz"))


# --------------------------------------------------------------------------------------------- #
# Atomic writers


def test_atomic_path_never_leaves_a_partial_file(tmp_path):
    path = str(tmp_path / "runs.csv")
    store.write_text(path, "old\n")
    with pytest.raises(RuntimeError), store.atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("half a ta")
        raise RuntimeError("killed")
    with open(path) as f:
        assert f.read() == "old\n"
    assert os.listdir(tmp_path) == ["runs.csv"]
    # permissions follow the umask like an ordinary file (mkstemp would give 0600)
    umask = os.umask(0)
    os.umask(umask)
    store.write_text(path, "new\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    # a temporary left by a killed writer is cleaned up, nothing else is touched
    (tmp_path / ".runs.csv.0a1b2c3d4e5f.tmp").write_text("half")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / ".a.png.123.tmp").write_text("half")
    (tmp_path / "notes.tmp").write_text("mine")
    removed = store.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [".a.png.123.tmp", ".runs.csv.0a1b2c3d4e5f.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["figures", "notes.tmp", "runs.csv"]


def test_every_writer_goes_through_the_atomic_helpers():
    """Static audit: in the package, files are written only by phasespace.io.store (plots render
    into memory and hand the bytes to store.write_bytes; orbax writes checkpoints atomically)."""
    pkg = os.path.join(REPO, "phasespace")
    offenders = []
    patterns = [
        re.compile(r"open\([^)]*['\"][wax]b?\+?['\"]"),
        re.compile(r"np\.save(z|z_compressed|txt)?\("),
        re.compile(r"\.savefig\((?!buf)"),
        re.compile(r"\.to_csv\(|json\.dump\("),
    ]
    for root, _, files in os.walk(pkg):
        for name in files:
            if not name.endswith(".py") or name == "store.py":
                continue
            path = os.path.join(root, name)
            with open(path) as f:
                for i, line in enumerate(f, 1):
                    if any(p.search(line) for p in patterns):
                        offenders.append(f"{os.path.relpath(path, REPO)}:{i}: {line.strip()}")
    assert not offenders, "non-atomic writes:\n" + "\n".join(offenders)
