"""Refusals with reasons (issue 5): reference checkpoints with wrong keys or shapes (the
state_dict importer)."""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import pytest

from phasespace.io.reference import (
    CheckpointError,
    arch_from_reference_config,
    load_reference_transformer,
    transformer_params_from_state_dict,
)
from phasespace.models.transformer import TransformerArch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.environ.get("PHASESPACE_REFERENCE", os.path.join(REPO, "data", "reference"))

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
    assert arch_from_reference_config({**base, "act_fn": "Tanh"}) == dataclasses.replace(ARCH, act="tanh")
    assert arch_from_reference_config({**base, "act_fn": "GeLU"}).act == "gelu"
    with pytest.raises(CheckpointError, match="act_fn='SiLU': expected 'ReLU', 'GeLU' or 'Tanh'"):
        arch_from_reference_config({**base, "act_fn": "SiLU"})


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
