"""The networks of a sweep: each one's per-network settings, the static training recipe of a
bucket, and the expansion of a validated spec into its networks (deterministic, no JAX)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from phasespace.defaults import ATTENTION_FAMILIES, PAPER_STEPS, PRECISIONS, RECIPE_DEFAULTS
from phasespace.operations import ADDITION

STATIC_AXES = ("model", "p", "n_layers", "n_heads", "act", "diff_vocab", "eqn_sign")
"""Axes that change the compiled program: networks differing in them go to different buckets."""

INT_AXES = ("p", "n_layers", "n_heads", "d_model", "seed", "data_seed")
BOOL_AXES = ("diff_vocab", "eqn_sign")
FLOAT_AXES = ("attention_rate", "lr", "weight_decay", "train_fraction")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Static training recipe (SPEC §4); part of the compiled program."""

    steps: int = PAPER_STEPS
    b1: float = RECIPE_DEFAULTS["transformer"]["b1"]
    b2: float = RECIPE_DEFAULTS["transformer"]["b2"]
    eps: float = RECIPE_DEFAULTS["transformer"]["eps"]
    warmup_steps: int = RECIPE_DEFAULTS["transformer"]["warmup_steps"]
    precision: str = "float32"
    fast: bool = True
    """Use the exact per-vocabulary computation (:mod:`phasespace.models.fast`) when the bucket
    allows it (1 layer, no equals token); False forces the plain Flax model."""
    batch_size: int | None = None
    """Training pairs per optimizer step: None = full batch (every training pair, every step);
    an integer B ≥ 1 = minibatches of B pairs, the last batch of an epoch smaller (the reference
    code's ``DataLoader(train, batch_size, shuffle=False)``). Static: it changes the program."""
    shuffle: bool = False
    """Minibatch order: False = the order of the network's random split in every epoch (the
    reference); True = a fresh permutation each epoch, drawn from the split seed and the epoch."""
    early_stop: tuple[float, int] | None = None
    """The reference's early stopping ``(a, b)``: stop a network at the start of an epoch once
    its test accuracy was ≥ a at b consecutive evaluations (one evaluation per step); None: off."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: must be one of {PRECISIONS}")
        b = self.batch_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"batch_size={b!r}: must be None (full batch) or an integer ≥ 1")
        if self.shuffle and b is None:
            raise ValueError("shuffle=True: needs minibatches (an integer batch_size)")
        if self.early_stop is not None:
            a, n = self.early_stop
            if not 0.0 <= a <= 1.0 or isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"early_stop={self.early_stop!r}: must be (a in [0, 1], b an integer ≥ 1)")


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """One network's per-network settings (everything that is data, not shape).

    Attributes:
        seed: PRNG seed of the initial weights (``jax.random.key(seed)``).
        data_seed: seed of the train/test split (:func:`phasespace.tasks.train_mask`).
        attention_rate: α ∈ [0, 1] (SPEC §2).
        d_model: true width (≤ the bucket width).
        lr: peak learning rate.
        weight_decay: decoupled AdamW weight decay (scaled by the scheduled lr, SPEC §4).
        train_fraction: fraction f of the p² pairs used for training.
        operation: the network's labels c = f(a, b) mod p (:mod:`phasespace.operations`); data,
            not shape: networks of different operations share a bucket.
    """

    seed: int
    attention_rate: float
    d_model: int
    data_seed: int | None = None
    lr: float = 1e-3
    weight_decay: float = 2.0
    train_fraction: float = 0.8
    operation: str = ADDITION

    @property
    def split_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed


@dataclasses.dataclass(frozen=True)
class Network:
    """One network of a sweep: its index (row of the runs table) and every axis value."""

    index: int
    values: Mapping[str, Any]

    def spec(self) -> NetworkSpec:
        v = self.values
        return NetworkSpec(
            seed=int(v["seed"]),
            data_seed=None if int(v["data_seed"]) < 0 else int(v["data_seed"]),
            attention_rate=float(v["attention_rate"]),
            d_model=int(v["d_model"]),
            lr=float(v["lr"]),
            weight_decay=float(v["weight_decay"]),
            train_fraction=float(v["train_fraction"]),
            operation=str(v.get("operation", ADDITION)),
        )

    def row_values(self) -> dict[str, Any]:
        """The network's axis values as the runs table records them: ``data_seed`` resolved to
        the split seed actually used (−1 means the network's seed), ``attention_rate`` NaN for
        a family without attention (:data:`phasespace.defaults.ATTENTION_FAMILIES`)."""
        row = dict(self.values)
        row["data_seed"] = self.spec().split_seed
        if row["model"] not in ATTENTION_FAMILIES:
            row["attention_rate"] = math.nan
        return row

    def static_key(self) -> tuple[Any, ...]:
        return tuple(self.values[k] for k in STATIC_AXES)
