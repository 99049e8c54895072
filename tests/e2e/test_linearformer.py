"""A sweep over model = [transformer, linearformer] × act = [relu, tanh]: training, every metric,
the runs table, the network card and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phasespace.cli import main
from phasespace.io import store
from phasespace.io.params import list_bucket_params, load_bucket_params
from phasespace.models.linearformer import LinearformerArch
from phasespace.tasks import all_pairs
from tests.helpers import run_spec
from tests.helpers.numpy_reference import linearformer_forward

SPEC = """
name = "linearformer_mix"
[axes]
model = ["transformer", "linearformer"]
act = ["relu", "tanh"]
p = 7
d_model = [9, 12]
attention_rate = 1.0
seed = 0
[train]
steps = 60
chunk_steps = 30
[analysis]
every = 30
"""

FINITE = (
    "train_accuracy",
    "test_accuracy",
    "gradient_symmetricity",
    "distance_irrelevance",
    "distance_irrelevance_largest_wrong",
    "circularity",
    "param_norm",
)


@pytest.mark.slow  # ~1–2 min on 2 CPU cores; run with `pytest -m slow` (see the README)
def test_linearformer_and_tanh_sweep_trains_analyses_and_shows(tmp_path):
    out = run_spec(tmp_path, SPEC)
    runs = store.read_csv(str(out / "runs.csv"))
    models, acts = list(runs["model"]), list(runs["act"])
    assert sorted(zip(models, acts, runs["d_model"], strict=True)) == sorted(
        (m, a, d) for m in ("transformer", "linearformer") for a in ("relu", "tanh") for d in (9, 12)
    )
    lin = np.asarray([m == "linearformer" for m in models])
    assert np.all(np.isnan(runs["attention_rate"][lin]))
    assert np.all(runs["attention_rate"][~lin] == 1.0)
    for k in FINITE:
        assert np.all(np.isfinite(runs[k])), k
    # widths 9 and 12 have different residues mod 2: one bucket each; the transformer shares one
    env = json.loads((out / "environment.json").read_text())
    keys = sorted(b["key"] for b in env["buckets"])
    assert [k for k in keys if "linearformer" in k] == [
        f"p7_linearformer_L1_{a}_D{d}" for a in ("relu", "tanh") for d in (12, 9)
    ]
    recipes = {b["key"]: b["recipe"] for b in env["buckets"]}
    assert all(r["b2"] == 0.98 and r["warmup_steps"] == 10 for r in recipes.values())
    # the saved final parameters reproduce the table's accuracy through the float64 NumPy forward
    tokens, labels = all_pairs(LinearformerArch(7, 9).task)
    checked = 0
    for path in list_bucket_params(str(out)):
        b = load_bucket_params(path)
        if not isinstance(b.arch, LinearformerArch):
            continue
        for j, idx in enumerate(b.index):
            one = {"params": _take(b.params["params"], j)}
            logits = linearformer_forward(one, tokens, b.arch.act)
            row = list(runs["index"]).index(int(idx))
            assert runs["accuracy"][row] == pytest.approx(np.mean(logits.argmax(-1) == labels), abs=1e-7)
            checked += 1
    assert checked == 4
    row = int(runs["index"][np.flatnonzero(lin & (np.asarray(acts) == "tanh"))[0]])
    cards = tmp_path / "cards"
    assert main(["show", str(out), "--run", str(row), "--out", str(cards)]) == 0
    for kind in ("embedding", "logits", "fits", "training", "metrics"):
        assert (cards / f"run{row}_{kind}.png").stat().st_size > 5000, kind
    numbers = json.loads((cards / f"run{row}.json").read_text())
    r = list(runs["index"]).index(row)
    np.testing.assert_allclose(
        numbers["metrics"]["circularity"], runs["circularity"][r], rtol=1e-5, atol=1e-6
    )
    assert main(["report", str(out), "--no-cards"]) == 0
    assert "linearformer" in (out / "report.html").read_text()


def _take(tree, j):
    return {k: _take(v, j) if isinstance(v, dict) else np.asarray(v[j]) for k, v in tree.items()}
