"""The analysis of networks of other operations than addition: the metrics that assume addition
(both distance irrelevances, the Clock/Pizza/accompanying FVEs, the classification) are NaN /
``not-addition`` with the ``not_addition`` flag; the others are computed as for addition."""

from __future__ import annotations

import jax
import numpy as np

from phasespace.analysis import faults
from phasespace.analysis.circuits import analyze_full
from phasespace.models.fast import logits_table
from phasespace.population.stack import attn_scale
from phasespace.tasks import all_pairs, operation_labels, train_mask
from tests.analysis.test_circles import MODEL_A, _load

SAME = (
    "gradient_symmetricity",
    "gradient_symmetricity_zero_grads",
    "circularity",
    "circularity_b",
    "param_norm",
    "n_circles",
)
"""Metrics that do not use the operation (SPEC §5.1, §5.3, §5.4)."""
ADDITION_ONLY = ("distance_irrelevance", "distance_irrelevance_largest_wrong")


def test_model_a_analysed_as_addition_and_as_subtraction():
    """Model A's weights, analysed once with addition's labels and once with subtraction's."""
    arch, params, cfg = _load(MODEL_A)
    p = arch.p
    labels = np.stack([operation_labels("add", p), operation_labels("sub", p)])
    stacked = jax.tree_util.tree_map(lambda x: np.stack([x, x]), params)
    hp = {
        "attention_rate": np.full(2, cfg["attn_coeff"], np.float32),
        "attn_scale": np.full(2, attn_scale(arch.d_model), np.float32),
        "train_mask": np.stack([train_mask(p, 0.8, 0)] * 2),
        "labels": labels,
    }
    s, a = analyze_full(arch, stacked, hp)
    assert faults.describe_flags(s["degenerate"][0]) == ""
    assert faults.describe_flags(s["degenerate"][1]) == "not_addition"
    assert s["algorithm"].tolist() == ["pizza", "not-addition"]
    assert s["circular"].tolist() == [True, True]
    for k in SAME:
        np.testing.assert_array_equal(s[k][1], s[k][0], err_msg=k)
    for k in ("pc_frequency", "circle_frequency", "circle_delta"):
        np.testing.assert_array_equal(a[k][1], a[k][0], err_msg=k)
    np.testing.assert_array_equal(a["circle_frequency"][0][:3], [17, 3, 15])  # SPEC §7
    for k in ADDITION_ONLY:
        assert np.isfinite(s[k][0]) and np.isnan(s[k][1]), k
    n = int(s["n_circles"][0])
    for k in ("circle_fve_clock", "circle_fve_pizza"):
        assert np.all(np.isfinite(a[k][0][:n])) and np.all(np.isnan(a[k][1])), k
    assert np.isnan(s["circle1_fve_pizza"][1]) and s["circle1_fve_pizza"][0] > 0.5
    # accuracy against each network's own labels, recomputed directly
    tokens, _ = all_pairs(arch.task)
    logits = np.asarray(
        logits_table(arch, params, np.float32(cfg["attn_coeff"]), hp["attn_scale"][0], tokens)
    )
    pred = logits.argmax(axis=1)
    for j in range(2):
        np.testing.assert_allclose(s["accuracy"][j], np.mean(pred == labels[j]), rtol=1e-6)
    assert s["accuracy"][0] == 1.0 and s["accuracy"][1] < 0.1
