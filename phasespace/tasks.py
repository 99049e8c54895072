"""Modular-arithmetic data: the full table of p² inputs, their labels under an operation
(:mod:`phasespace.operations`; addition by default) and per-network train/test splits (SPEC §1)."""

from __future__ import annotations

import dataclasses

import numpy as np

from phasespace import operations


@dataclasses.dataclass(frozen=True)
class Task:
    """Static description of the modular-arithmetic task (SPEC §1): the inputs' shape. The
    operation (the labels) is per-network data, not part of the task (:func:`operation_labels`).

    Attributes:
        p: the modulus (a prime; sweeps need p ≥ :data:`phasespace.defaults.MIN_P`).
        diff_vocab: separate operand vocabulary (token b is encoded as b + p, V = 2p).
        eqn_sign: append an equals token with id V − 1 (n_ctx = 3, V grows by one).
    """

    p: int
    diff_vocab: bool = False
    eqn_sign: bool = False

    @property
    def vocab(self) -> int:
        """Vocabulary size V (logits range over all V classes; labels are < p)."""
        return (2 * self.p if self.diff_vocab else self.p) + (1 if self.eqn_sign else 0)

    @property
    def n_ctx(self) -> int:
        """Sequence length: 2 operands, plus the equals token when ``eqn_sign``."""
        return 3 if self.eqn_sign else 2

    @property
    def n_pairs(self) -> int:
        return self.p * self.p


def encode(task: Task, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Token sequences of the inputs (a, b): int32 (N, n_ctx) with a, b (+ p if ``diff_vocab``),
    and the equals token V − 1 if ``eqn_sign`` (the one encoding of the task's inputs)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    cols = [a, b + task.p if task.diff_vocab else b]
    if task.eqn_sign:
        cols.append(np.full_like(a, task.vocab - 1))
    return np.stack(cols, axis=1).astype(np.int32)


def all_pairs(task: Task, operation: str = operations.ADDITION) -> tuple[np.ndarray, np.ndarray]:
    """All p² inputs of the task in lexicographic order (a, then b), with their labels under
    ``operation`` (default: addition, the paper's task).

    Row ``i`` holds the pair a = i // p, b = i % p.

    Returns:
        tokens: int32 array of shape (p², n_ctx) (:func:`encode`).
        labels: int32 array of shape (p²,): :func:`operation_labels` (``(a + b) mod p`` for
        ``"add"``).

    Raises:
        phasespace.operations.OperationError: unknown ``operation`` or invalid labels.
    """
    p = task.p
    a, b = np.divmod(np.arange(p * p, dtype=np.int64), p)
    return encode(task, a, b), operation_labels(operation, p)


def operation_labels(operation: str, p: int) -> np.ndarray:
    """Labels c = f(a, b) mod p of ``operation`` (:mod:`phasespace.operations`) over all p² pairs
    in :func:`all_pairs` order: int32 (p²,), values in [0, p).

    Raises:
        phasespace.operations.OperationError: unknown ``operation`` (naming the registered ones)
            or a registered function whose output is not (p²,) integers in [0, p).
    """
    return operations.labels(operation, p)


def is_addition(labels: np.ndarray, p: int) -> np.ndarray:
    """Which label rows are those of addition ((a + b) mod p), the task the Clock/Pizza
    metrics are defined for: bool (...,) for labels (..., p²)."""
    return np.all(np.asarray(labels) == operation_labels(operations.ADDITION, p), axis=-1)


def n_train(p: int, train_fraction: float) -> int:
    """Number of training pairs, floor(f · p²) (SPEC §1: p = 59, f = 0.8 → 2784)."""
    return int(np.floor(train_fraction * p * p))


def train_mask(p: int, train_fraction: float, data_seed: int) -> np.ndarray:
    """One network's train/test split over the p² pairs of :func:`all_pairs`.

    The split depends only on ``(p, train_fraction, data_seed)``: a NumPy PCG64 permutation of the
    p² pair indices seeded by ``data_seed``, whose first floor(f · p²) entries are the training set.

    Returns:
        bool array of shape (p²,): True for training pairs, False for held-out pairs.

    Raises:
        ValueError: if ``train_fraction`` is not in (0, 1) or the split would leave either side empty.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction={train_fraction!r}: must be in (0, 1)")
    k = n_train(p, train_fraction)
    if k == 0 or k == p * p:
        raise ValueError(
            f"train_fraction={train_fraction!r} with p={p} gives {k} of {p * p} training pairs: "
            "both the train and the test split must be non-empty"
        )
    perm = split_order(p, data_seed)
    mask = np.zeros(p * p, dtype=bool)
    mask[perm[:k]] = True
    return mask


def split_order(p: int, data_seed: int) -> np.ndarray:
    """The random split's permutation of the p² pair indices (NumPy PCG64 seeded by
    ``data_seed``): its first floor(f · p²) entries are the training set of
    :func:`train_mask` for any f, in the order minibatch training visits them each epoch when
    not shuffled (the reference's ``DataLoader(random_split(...)[0], shuffle=False)``).

    Returns:
        int64 array of shape (p²,), a permutation of 0 … p² − 1.
    """
    return np.random.default_rng(int(data_seed)).permutation(p * p)


def split_rank(p: int, train_fraction: float, data_seed: int) -> np.ndarray:
    """Each pair's position in the network's fixed epoch order: the training pairs get
    0 … n_train − 1 in :func:`split_order`'s order, the held-out pairs n_train … p² − 1.

    Returns:
        int32 array of shape (p²,) (the inverse permutation of :func:`split_order`).

    Raises:
        ValueError: as :func:`train_mask`.
    """
    train_mask(p, train_fraction, data_seed)  # the same checks
    rank = np.empty(p * p, np.int32)
    rank[split_order(p, data_seed)] = np.arange(p * p, dtype=np.int32)
    return rank
