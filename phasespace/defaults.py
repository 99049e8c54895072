"""The paper's constants in one place: names, the training recipe's defaults and the label
thresholds (SPEC §2–§5, arXiv 2306.17844). Every other module reads them from here.

Imports nothing but the standard library, so the spec layer stays free of JAX.
"""

from __future__ import annotations

from typing import Any

# --------------------------------------------------------------------------------------------- #
# Names

MODEL_FAMILIES: dict[str, str | None] = {
    "transformer": None,
    "mlp_alpha": "A",
    "mlp_alpha_prime": "X",
    "mlp_beta": "B",
    "mlp_gamma": "C",
    "mlp_delta": "D",
    "linearformer": None,
}
"""Model family name (the sweep axis ``model``) → reference key of the appendix MLP model
(SPEC §3; ``None`` for the families of the reference's main training script: the transformer and
its attention-free "Linearformer", ``use_linear``, which share the transformer's recipe)."""

ATTENTION_FAMILIES = ("transformer",)
"""Families whose networks have attention, and so an attention rate α (SPEC §2)."""

ACTIVATIONS = ("relu", "gelu", "tanh")
"""MLP nonlinearities of the reference code (SPEC §2; its ``act_fn`` "ReLU", "GeLU", "Tanh")."""

PRECISIONS = ("float32", "tensorfloat32", "bfloat16")
"""Matmul precision modes of training (``[train] precision``); float32 is exact."""

DI_METRICS = ("distance_irrelevance", "distance_irrelevance_largest_wrong")
"""The two distance irrelevances: correct logit (paper Def. 4.2) and the published tables'
largest-wrong-logit variant (SPEC §5.2)."""

ALGORITHMS = ("non-circular", "pizza", "clock", "mixed", "collapsed", "diverged", "not-addition")
"""Algorithm classes of a network (SPEC §5.7); ``algorithm_code`` indexes this tuple. The
classification of the final weights gives the first four; a network whose accuracy collapsed
(``collapsed`` in the runs table) is labelled ``collapsed`` whatever its weights look like. The
Clock/Pizza classification is defined for addition only: a network trained on another operation
(:mod:`phasespace.operations`) is ``not-addition`` (its ``circular`` column still says whether
its embedding is circular)."""

# --------------------------------------------------------------------------------------------- #
# The training recipe (SPEC §4)

PAPER_AXES: dict[str, Any] = {
    "model": "transformer",
    "p": 59,
    "n_layers": 1,
    "n_heads": 4,
    "act": "relu",
    "diff_vocab": False,
    "eqn_sign": False,
    "d_model": 128,
    "attention_rate": 0.0,
    "lr": 1e-3,
    "weight_decay": 2.0,
    "train_fraction": 0.8,
    "seed": 0,
    "data_seed": -1,
    "operation": "add",
}
"""Every sweepable axis with the paper's value (``data_seed = -1`` means "= seed"; ``operation``:
the labels c = f(a, b) mod p, :mod:`phasespace.operations`, addition in the paper)."""

PAPER_STEPS = 20_000
"""Full-batch optimizer steps of the paper's runs."""

RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "transformer": {"b1": 0.9, "b2": 0.98, "eps": 1e-8, "warmup_steps": 10},
    "mlp": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "warmup_steps": 0},
}
"""Optimizer defaults per family (SPEC §4): transformers AdamW betas (0.9, 0.98) with a 10-step
warm-up; MLP models betas (0.9, 0.999), no warm-up. Both: lr 1e-3, wd 2.0, full batch."""


def recipe_family(model: str) -> str:
    """The key of :data:`RECIPE_DEFAULTS` for a model family name."""
    return "transformer" if MODEL_FAMILIES.get(model) is None else "mlp"


MAX_BUCKETS = 8
"""Width buckets per static group at most (``[buckets] max_buckets``)."""
MAX_WASTE = 0.10
"""Share of padded matmul FLOPs the width-bucket planner accepts (``[buckets] max_waste``)."""

# --------------------------------------------------------------------------------------------- #
# Metrics and labels (SPEC §5)

N_TRIPLES = 100
"""Triples (a, b, c) sampled for gradient symmetricity (SPEC §5.1)."""
TRIPLE_SEED = 42
"""Seed of those triples (the reference code's)."""

CIRCULAR_THRESHOLD = 0.995
"""A network is circular iff circularity ≥ this (SPEC §5.3)."""
CIRCULARITY_COMPONENTS = 4
"""Principal components of the token embeddings averaged by circularity (SPEC §5.3)."""
MIN_P = 5
"""Smallest modulus whose circuit metrics mean something: the p centred token embeddings span at
most p − 1 dimensions, and circularity averages :data:`CIRCULARITY_COMPONENTS` principal
components, so p − 1 ≥ 4 (p = 3 has two components and one frequency pair: circularity is 2/3 for
every network)."""
GRADIENT_SYMMETRICITY_THRESHOLD = 0.98
"""Pizza side iff gradient symmetricity > this (SPEC §5.7)."""
DISTANCE_IRRELEVANCE_THRESHOLD = 0.6
"""Pizza side iff distance irrelevance < this (SPEC §5.7)."""

THRESHOLDS: dict[str, float] = {
    "circular_threshold": CIRCULAR_THRESHOLD,
    "gradient_symmetricity_threshold": GRADIENT_SYMMETRICITY_THRESHOLD,
    "distance_irrelevance_threshold": DISTANCE_IRRELEVANCE_THRESHOLD,
}
"""The label thresholds under their one name each (the ``[analysis]`` options and the
``compare`` flags use these names)."""

FULL_ACCURACY = 0.99
"""Accuracy counted as "solved" for the first-step records and the collapse rule (the reference
code's 0.99); the ``first_full_*`` records count exactly 1."""
COLLAPSE_DROP = 0.1
"""A network collapsed when its final training or test accuracy is more than this below its best
after reaching :data:`FULL_ACCURACY`."""

DATA_ORDER_STREAM = 0x0DA7A
"""Folded into a network's split-seed key (then the epoch) to draw its shuffled minibatch order
(``[train] shuffle``), apart from the other streams of that seed."""
