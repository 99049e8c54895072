"""Precision modes: exact float32 by default, TF32/bf16 opt-in, reaching the compiled programs."""

import re

import jax
import pytest

from phasespace.models.transformer import TransformerArch
from phasespace.spec.networks import Recipe
from phasespace.training import placement, program

ARCH = TransformerArch(p=5, d_model=8)


def _dot_precisions(text: str) -> tuple[int, set[str]]:
    """Number of dot_general ops in StableHLO text and their precision / algorithm attributes."""
    n = len(re.findall(r"stablehlo\.dot_general", text))
    attrs = set(re.findall(r"precision = \[[A-Z]+, [A-Z]+\]|lhs_precision_type = \w+", text))
    return n, attrs


def test_mode_names_per_platform():
    assert program.matmul_precision("float32", "cpu") == "highest"
    assert program.matmul_precision("float32", "gpu") == "highest"
    assert program.matmul_precision("tensorfloat32", "gpu") == "tensorfloat32"
    assert program.matmul_precision("bfloat16", "gpu") == "BF16_BF16_F32"
    # XLA:CPU has no TF32 and runs bf16 dot algorithms in float32: recorded as such.
    assert program.effective_precision("bfloat16", "cpu") == "float32"
    assert program.effective_precision("bfloat16", "tpu") == "bfloat16"
    with pytest.raises(ValueError, match="precision='fp8'"):
        program.matmul_precision("fp8", "gpu")
    with pytest.raises(ValueError, match="precision"):
        Recipe(precision="fp8")


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("float32", {"precision = [HIGHEST, HIGHEST]"}),
        ("tensorfloat32", {"precision = [HIGH, HIGH]"}),
        ("bfloat16", {"precision = [DEFAULT, DEFAULT]", "lhs_precision_type = bf16"}),
    ],
)
def test_training_programs_carry_the_mode(monkeypatch, mode, expected):
    """Every matmul of the training chunk (fast and plain) is lowered in the mode's precision, as
    it would be on a GPU (XLA:CPU itself then computes float32)."""
    monkeypatch.setattr(program, "_platform", lambda layout: "gpu")
    layout = placement.simple_layout(2, devices=jax.devices()[:1])
    for fast in (True, False):
        text = program.lowered_sharded_chunk(
            ARCH, Recipe(steps=2, precision=mode, fast=fast), 2, layout, 2
        ).as_text()
        n, attrs = _dot_precisions(text)
        assert n > 10 and attrs == expected, (fast, attrs)
