"""Training (SPEC §4): loss, optimizer and the vmapped, scanned step of a whole population.

``train_chunk`` is a ``lax.scan`` over K AdamW steps of one network (full batch, or the minibatches
of :func:`batch_mask`, with the reference's early stopping when the recipe asks for it); the population
program maps it over the run axis R — ``jit(vmap(train_chunk))`` (:func:`compiled_chunk`), or, as
:func:`train_population` runs it, sharded over devices in groups that fit each device
(:mod:`phasespace.training.program`). Per-network learning rate, weight decay, attention rate, softmax scale,
train split and labels (the network's operation) are data, so one program serves a whole grid.
The host touches arrays only between chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from phasespace.defaults import COLLAPSE_DROP, DATA_ORDER_STREAM, FULL_ACCURACY, RECIPE_DEFAULTS
from phasespace.models.fast import logits_table
from phasespace.models.transformer import TransformerArch
from phasespace.operations import ADDITION
from phasespace.spec.networks import Recipe
from phasespace.tasks import all_pairs

"""Matmul precision modes: exact float32 (default), TF32 and bf16 (opt-in, SPEC §4)."""


# --------------------------------------------------------------------------------------------- #
# Loss (SPEC §4)


@jax.custom_vjp
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy −log softmax(logits)[label], accurate in float32 at any margin.

    Computed as (m − l_y) + log1p(Σ_{j≠argmax} exp(l_j − m)) with m = max l, so a loss of 1e-13
    (margin 30) keeps its relative precision instead of rounding to 0 as ``logsumexp − l_y`` does
    in float32. The gradient is softmax − onehot with the label's entry computed as
    −Σ_{j≠y} softmax_j, so the correct class keeps its (tiny) gradient and each row sums to ~0 —
    the same as the reference's float64 loss (SPEC §4), without enabling x64.

    Args:
        logits: float32 (..., V).
        labels: int32 (...), values in [0, V).

    Returns:
        float32 (...): the loss of each example, in nats.
    """
    return _ce_fwd(logits, labels)[0]


def _ce_fwd(logits: jax.Array, labels: jax.Array):
    # Σ_{j≠argmax} exp(l_j − m) = Σ_{l_j<m} exp(l_j − m) + (number of tied maxima − 1): the same
    # sum as excluding the argmax entry, without a (slow on CPU) variadic argmax reduction.
    m = jnp.max(logits, axis=-1, keepdims=True)
    is_top = logits == m
    e = jnp.exp(logits - m)
    n_top = jnp.sum(is_top, axis=-1, dtype=jnp.int32)
    rest = jnp.sum(jnp.where(is_top, 0.0, e), axis=-1) + (n_top - 1).astype(logits.dtype)
    label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    loss = (m[..., 0] - label_logit) + jnp.log1p(rest)
    return loss, (e, rest, labels, label_logit - m[..., 0])


def _ce_bwd(res, g):
    e, rest, labels, label_gap = res
    total = 1.0 + rest  # Σ_j exp(l_j − m)
    # Σ_{j≠y} exp(l_j − m): exactly ``rest`` when the label is a maximum (so a loss of 1e-13 keeps
    # its gradient); otherwise total − exp(l_y − m) ≥ total / 2, without cancellation.
    others = jnp.where(label_gap >= 0, rest, total - jnp.exp(label_gap)) / total
    is_label = jax.lax.broadcasted_iota(jnp.int32, e.shape, e.ndim - 1) == labels[..., None]
    grad = jnp.where(is_label, -others[..., None], e / total[..., None])
    return grad * g[..., None], None


cross_entropy.defvjp(_ce_fwd, _ce_bwd)


def first_argmax(logits: jax.Array) -> jax.Array:
    """``jnp.argmax(logits, axis=-1)`` (first index of the maximum), as a max and a min reduction.

    Args:
        logits: float (..., V).

    Returns:
        int32 (...): the smallest index j with logits[..., j] equal to the row maximum.
    """
    m = jnp.max(logits, axis=-1, keepdims=True)
    idx = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(logits == m, idx, logits.shape[-1]), axis=-1)


# --------------------------------------------------------------------------------------------- #
# Optimizer (SPEC §4)


def warmup_schedule(lr: jax.Array | float, warmup_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Reference warm-up: optimizer step t (t = 0, 1, …) uses lr · min(t / warmup_steps, 1).

    The first update (t = 0) therefore has rate 0 and is a no-op. ``warmup_steps = 0`` gives a
    constant rate.
    """
    if warmup_steps <= 0:
        return lambda count: jnp.asarray(lr, jnp.float32) * jnp.ones_like(count, jnp.float32)
    return lambda count: lr * jnp.minimum(count.astype(jnp.float32) / warmup_steps, 1.0)


def make_optimizer(
    lr: jax.Array | float,
    weight_decay: jax.Array | float,
    b1: float = RECIPE_DEFAULTS["transformer"]["b1"],
    b2: float = RECIPE_DEFAULTS["transformer"]["b2"],
    eps: float = RECIPE_DEFAULTS["transformer"]["eps"],
    warmup_steps: int = RECIPE_DEFAULTS["transformer"]["warmup_steps"],
) -> optax.GradientTransformation:
    """AdamW of the reference recipe (SPEC §4): optax ``adamw`` whose decoupled weight decay is
    scaled by the scheduled rate (θ ← θ − lr_t·wd·θ − lr_t·m̂/(√v̂ + eps), as PyTorch's AdamW).

    ``lr`` and ``weight_decay`` may be traced per-network scalars (the optimizer is built inside
    the vmapped step).
    """
    return optax.adamw(
        learning_rate=warmup_schedule(lr, warmup_steps),
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
    )


# --------------------------------------------------------------------------------------------- #
# The scanned, vmapped step


class TrainState(NamedTuple):
    """State of one network (the population stacks a leading run axis on every leaf).

    The run record (best values and first steps) is tracked here, inside the training program,
    over every step's evaluation (the parameters *before* that step's update, counted by their
    step number); :func:`run_record` folds in the final parameters and derives the runs-table
    columns. Only steps before the network became non-finite count, and only those with a
    finite training loss.

    Attributes:
        params: Flax parameter tree, float32.
        opt_state: optax AdamW state.
        step: int32, optimizer steps taken.
        first_full_train: int32, first step at which train accuracy was exactly 1 (−1: never).
        first_full_test: int32, same for test accuracy.
        first_solved_train: int32, first step at which train accuracy was ≥
            :data:`~phasespace.defaults.FULL_ACCURACY` (0.99) (−1: never).
        first_solved_test: int32, same for test accuracy.
        best_train_accuracy, best_test_accuracy: float32, the maximum accuracy so far (NaN
            before the first step).
        best_train_loss, best_test_loss: float32, the minimum finite loss so far (NaN: none).
        nonfinite_step: int32, step at which the loss, the parameters or the AdamW moments
            became NaN/inf; the network is frozen from then on at its last finite parameters and
            optimizer state (−1: never).
        stop_count: int32, the reference's early-stop counter: consecutive evaluations (steps)
            with test accuracy ≥ a (``recipe.early_stop``; stays 0 without early stopping).
        stopped_step: int32, the step at whose start the network stopped early (its optimizer
            steps taken); frozen from then on like a non-finite network (−1: never).

    ``step`` counts the population's steps (the same for every network); a network stopped
    early took ``stopped_step`` of them (:func:`run_record`'s ``steps``).
    """

    params: Any
    opt_state: Any
    step: jax.Array
    first_full_train: jax.Array
    first_full_test: jax.Array
    first_solved_train: jax.Array
    first_solved_test: jax.Array
    best_train_accuracy: jax.Array
    best_test_accuracy: jax.Array
    best_train_loss: jax.Array
    best_test_loss: jax.Array
    nonfinite_step: jax.Array
    stop_count: jax.Array
    stopped_step: jax.Array


HISTORY_FIELDS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")


def table(arch: TransformerArch, operation: str = ADDITION) -> tuple[jax.Array, jax.Array]:
    """All p² inputs of the bucket's task and their labels under ``operation`` (default:
    addition), on device: int32 (p², n_ctx) and (p²,). (Training reads each network's labels
    from its ``hp["labels"]``.)"""
    tokens, labels = all_pairs(arch.task, operation)
    return jnp.asarray(tokens), jnp.asarray(labels)


def split_statistics(logits: jax.Array, labels: jax.Array, train_mask: jax.Array) -> dict[str, jax.Array]:
    """Loss and accuracy of one network on its train and test split (the one computation of
    both, for training and for the analysis).

    Args:
        logits: float32 (p², V) over all pairs; labels: int32 (p²,); train_mask: bool (p²,).

    Returns:
        dict: ``losses`` (p²,) per-pair cross-entropy, ``correct`` bool (p²,) (argmax, ties →
        lowest class), ``train_loss``/``test_loss`` (mean over the split),
        ``train_correct``/``test_correct`` (int32 counts), ``train_accuracy``/``test_accuracy``
        and ``accuracy`` over all p² pairs (float32 from the counts, correctly rounded, exactly
        1.0 when perfect).
    """
    losses = cross_entropy(logits, labels)
    n_tr = jnp.sum(train_mask)
    n_te = train_mask.shape[0] - n_tr
    correct = first_argmax(logits) == labels
    tr_c = jnp.sum(correct & train_mask).astype(jnp.int32)
    te_c = jnp.sum(correct & ~train_mask).astype(jnp.int32)
    # All pairs: the count over p², the denominator taken from the data; XLA turns a division by
    # the constant p² into a multiply by its float32 reciprocal (121 correct of 121 → 0.99999994).
    n_all = jnp.sum(train_mask, dtype=jnp.int32) + jnp.sum(~train_mask, dtype=jnp.int32)
    return {
        "losses": losses,
        "correct": correct,
        "train_loss": jnp.sum(jnp.where(train_mask, losses, 0.0)) / n_tr,
        "test_loss": jnp.sum(jnp.where(train_mask, 0.0, losses)) / jnp.maximum(n_te, 1),
        "train_correct": tr_c,
        "test_correct": te_c,
        "train_accuracy": tr_c / n_tr,
        "test_accuracy": te_c / jnp.maximum(n_te, 1),
        "accuracy": (tr_c + te_c) / n_all,
    }


def evaluate(
    arch: TransformerArch,
    params: Any,
    hp: dict[str, jax.Array],
    tokens: jax.Array,
    labels: jax.Array,
    fast: bool = True,
    batch: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One network over the full table: train loss and split statistics
    (:func:`split_statistics`).

    ``labels`` are this network's, int32 (p²,) (``hp["labels"]`` in :func:`train_chunk`).

    ``fast`` selects the exact fast path for 1-layer, two-token buckets
    (:func:`phasespace.models.fast.logits_table`). ``batch`` (bool (p²,), a subset of the
    training pairs, :func:`batch_mask`): the returned loss is the mean over that batch instead
    (so its gradient is the minibatch gradient), and ``stats["train_loss"]`` holds the full
    training loss.

    Returns:
        ``(loss, stats)``: float32 scalar mean cross-entropy over the training pairs (or over
        ``batch``), and a dict with ``test_loss``, ``train_correct``/``test_correct`` (int32
        counts), ``train_accuracy``/``test_accuracy`` (float32, exactly 1.0 when perfect),
        ``logits`` (p², V) and, with ``batch``, ``train_loss``.
    """
    logits = logits_table(arch, params, hp["attention_rate"], hp["attn_scale"], tokens, fast)
    s = split_statistics(logits, labels, hp["train_mask"])
    keys = ("test_loss", "train_correct", "test_correct", "train_accuracy", "test_accuracy")
    stats = {k: s[k] for k in keys}
    stats["logits"] = logits
    if batch is None:
        return s["train_loss"], stats
    stats["train_loss"] = s["train_loss"]
    return jnp.sum(jnp.where(batch, s["losses"], 0.0)) / jnp.sum(batch), stats


def batch_mask(recipe: Recipe, hp: dict[str, jax.Array], step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The minibatch of one network at optimizer step ``step`` (the reference code's
    ``DataLoader(train_dataset, batch_size, shuffle=False)``, drop_last off).

    With B = ``recipe.batch_size`` and n_train = Σ ``hp["train_mask"]``, an epoch has
    n_b = ceil(n_train / B) batches; step t uses batch j = t mod n_b of epoch e = t // n_b: the
    training pairs whose place in the epoch's order is in [jB, (j + 1)B) (the last batch holds
    the n_train − (n_b − 1)B left). The order is ``hp["data_rank"]`` in every epoch (the random
    split's order, :func:`phasespace.tasks.split_rank`) or, with ``recipe.shuffle``, a uniform
    permutation of the training pairs drawn from ``jax.random.key(hp["data_seed"])`` folded
    with :data:`~phasespace.defaults.DATA_ORDER_STREAM` and e (:func:`epoch_rank`). It
    depends only on the network's data and t, not on how the steps are chunked.

    Args:
        recipe: static; ``batch_size`` an integer.
        hp: one network's data (``train_mask`` (p²,) bool, and ``data_rank`` (p²,) int32 or
            ``data_seed`` () uint32).
        step: int32 scalar t.

    Returns:
        ``(batch, epoch_start)``: bool (p²,), the pairs of step t's batch, and bool scalar,
        whether t starts an epoch (j = 0).
    """
    size = recipe.batch_size
    if size is None:
        raise ValueError("batch_mask: recipe.batch_size is None (full batch)")
    train = hp["train_mask"]
    n_batches = (jnp.sum(train, dtype=jnp.int32) + size - 1) // size
    epoch, j = step // n_batches, step % n_batches
    rank = epoch_rank(hp["data_seed"], epoch, train) if recipe.shuffle else hp["data_rank"]
    return train & (rank // size == j), j == 0


def epoch_rank(data_seed: jax.Array, epoch: jax.Array, train: jax.Array) -> jax.Array:
    """Each pair's place in a shuffled epoch: the training pairs get 0 … n_train − 1 in the
    order of a uniform random permutation (``jax.random.permutation`` of the p² indices, key
    ``fold_in(fold_in(key(data_seed), DATA_ORDER_STREAM), epoch)``), the held-out pairs follow.

    Args:
        data_seed: uint32 scalar, the network's split seed; epoch: int32 scalar; train: bool (p²,).

    Returns:
        int32 (p²,), a permutation of 0 … p² − 1.
    """
    n = train.shape[0]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(data_seed), DATA_ORDER_STREAM), epoch)
    perm = jax.random.permutation(key, n)
    order = perm[jnp.argsort(~train[perm], stable=True)]  # training pairs first, permuted order kept
    return jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))


def init_state(recipe: Recipe, params: Any, hp: dict[str, jax.Array]) -> TrainState:
    """Fresh :class:`TrainState` of one network (vmap it for a population)."""
    tx = make_optimizer(hp["lr"], hp["weight_decay"], recipe.b1, recipe.b2, recipe.eps, recipe.warmup_steps)
    minus1, nan = jnp.int32(-1), jnp.float32(jnp.nan)
    return TrainState(
        params,
        tx.init(params),
        jnp.int32(0),
        minus1,
        minus1,
        minus1,
        minus1,
        nan,
        nan,
        nan,
        nan,
        minus1,
        jnp.int32(0),
        minus1,
    )


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def train_chunk(
    arch: TransformerArch,
    recipe: Recipe,
    n_steps: int,
    state: TrainState,
    hp: dict[str, jax.Array],
    tokens: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """``n_steps`` AdamW steps of one network (a ``lax.scan``).

    The loss and accuracies of each step are those of the parameters *before* that step's update
    over the full train and test splits (one forward over all p² pairs yields both the gradient
    and the held-out accuracy). With ``recipe.batch_size`` the gradient is that of the mean loss
    over the step's minibatch (:func:`batch_mask`; the forward still covers every pair, the
    other pairs get zero weight), the recorded losses and accuracies stay those of the full
    splits. With ``recipe.early_stop = (a, b)`` (the reference's rule) every step's evaluation
    counts consecutive test accuracies ≥ a (``stop_count``); at the start of an epoch (every
    step with full batches) a network whose count is ≥ b stops: its parameters and optimizer
    state stay frozen, ``stopped_step`` records the step, its later evaluations repeat its
    frozen parameters' and no longer enter the run record.
    The labels are the network's own, ``hp["labels"]`` int32 (p²,) (its operation); ``tokens``
    int32 (p², n_ctx) is the table shared by every network of the bucket.

    Returns:
        ``(state, history)``: the advanced state and float32 arrays of shape (n_steps,) for each
        of :data:`HISTORY_FIELDS`.
    """
    tx = make_optimizer(hp["lr"], hp["weight_decay"], recipe.b1, recipe.b2, recipe.eps, recipe.warmup_steps)
    labels = hp["labels"]

    def grad_fn(params: Any, batch: jax.Array | None):
        fn = lambda p: evaluate(arch, p, hp, tokens, labels, recipe.fast, batch)
        return jax.value_and_grad(fn, has_aux=True)(params)

    def step(s: TrainState, _):
        if recipe.batch_size is None:
            batch, epoch_start = None, jnp.bool_(True)
        else:
            batch, epoch_start = batch_mask(recipe, hp, s.step)
        (loss, st), grads = grad_fn(s.params, batch)
        if batch is not None:
            loss = st["train_loss"]  # the recorded loss: the full training split's
        updates, opt_state = tx.update(grads, s.opt_state, s.params)
        params = optax.apply_updates(s.params, updates)
        alive = s.nonfinite_step < 0
        ok = jnp.isfinite(loss) & _all_finite(params) & _all_finite(opt_state)
        stop_count, stopped_step = s.stop_count, s.stopped_step
        if recipe.early_stop is not None:
            a, b = recipe.early_stop
            stopping = (s.stopped_step < 0) & epoch_start & (s.stop_count >= b)
            stopped_step = jnp.where(stopping, s.step, s.stopped_step)
            alive = alive & (stopped_step < 0)
            hit = st["test_accuracy"] >= jnp.float32(a)
            stop_count = jnp.where(alive, jnp.where(hit, s.stop_count + 1, 0), s.stop_count)
        keep = alive & ok
        params = jax.tree_util.tree_map(lambda n, o: jnp.where(keep, n, o), params, s.params)
        opt_state = jax.tree_util.tree_map(lambda n, o: jnp.where(keep, n, o), opt_state, s.opt_state)
        # The run record counts this step's evaluation while the network is alive and its loss
        # finite (a non-finite loss means non-finite logits, whose accuracy means nothing).
        counted = alive & jnp.isfinite(loss)
        acc_tr, acc_te = st["train_accuracy"], st["test_accuracy"]
        solved = jnp.float32(FULL_ACCURACY)  # float32 division and compare: exact for n < 3e5

        def first(prev: jax.Array, hit: jax.Array) -> jax.Array:
            return jnp.where((prev < 0) & hit & counted, s.step, prev)

        def best(prev: jax.Array, x: jax.Array, better: Callable) -> jax.Array:
            return jnp.where(counted & jnp.isfinite(x), better(prev, x), prev)  # fmax/fmin skip NaN

        new = TrainState(
            params=params,
            opt_state=opt_state,
            step=s.step + 1,
            first_full_train=first(s.first_full_train, acc_tr >= 1.0),
            first_full_test=first(s.first_full_test, acc_te >= 1.0),
            first_solved_train=first(s.first_solved_train, acc_tr >= solved),
            first_solved_test=first(s.first_solved_test, acc_te >= solved),
            best_train_accuracy=best(s.best_train_accuracy, acc_tr.astype(jnp.float32), jnp.fmax),
            best_test_accuracy=best(s.best_test_accuracy, acc_te.astype(jnp.float32), jnp.fmax),
            best_train_loss=best(s.best_train_loss, loss.astype(jnp.float32), jnp.fmin),
            best_test_loss=best(s.best_test_loss, st["test_loss"].astype(jnp.float32), jnp.fmin),
            nonfinite_step=jnp.where(alive & ~ok, s.step, s.nonfinite_step),
            stop_count=stop_count,
            stopped_step=stopped_step,
        )
        hist = {
            "train_loss": loss,
            "test_loss": st["test_loss"],
            "train_accuracy": st["train_accuracy"].astype(jnp.float32),
            "test_accuracy": st["test_accuracy"].astype(jnp.float32),
        }
        return new, hist

    return jax.lax.scan(step, state, None, length=n_steps)


# --------------------------------------------------------------------------------------------- #
# The run record (SPEC §5.6; the reference code's best/first/delay/gap statistics)

RECORD_COLUMNS = (
    "best_train_accuracy",
    "best_test_accuracy",
    "best_train_loss",
    "best_test_loss",
    "first_solved_train_step",
    "first_solved_test_step",
    "first_full_train_step",
    "first_full_test_step",
    "generalization_gap",
    "generalization_delay1",
    "generalization_delay2",
    "collapsed",
    "nonfinite_step",
    "stopped_step",
    "steps",
)
"""Runs-table columns of :func:`run_record`."""


def run_record(state: TrainState, final: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The run record of R networks from their final state and final metrics (host, NumPy).

    The final parameters (the step after the last one taken, which no training step evaluated)
    count as one more step: best values, first steps and collapse all include ``final``.

    Args:
        state: the trained population's state (leaves (R, ...); ``params``/``opt_state`` unused).
        final: ``train_accuracy``, ``test_accuracy``, ``train_loss``, ``test_loss`` (R,) of the
            final parameters (the runs table's final values).

    Returns:
        Each of :data:`RECORD_COLUMNS` (R,):

        * ``best_{train,test}_{accuracy,loss}``: the maximum accuracy / minimum finite loss over
          every step and the final parameters (float32; NaN: no finite loss).
        * ``first_solved_{train,test}_step``: first step with accuracy ≥
          :data:`~phasespace.defaults.FULL_ACCURACY` (0.99); ``first_full_*_step``: with accuracy
          exactly 1; float64, NaN when never.
        * ``generalization_gap``: best train accuracy − best test accuracy (float64).
        * ``generalization_delay1``: first solved test step − first solved train step;
          ``generalization_delay2``: the same for accuracy 1 (float64 steps, NaN if either is
          never).
        * ``collapsed`` (bool): for the train or the test split, accuracy reached ≥ 0.99 and the
          final accuracy is more than :data:`~phasespace.defaults.COLLAPSE_DROP` (0.1) below the
          best.
        * ``nonfinite_step``: step at which the network became non-finite (float64, NaN: never);
          ``stopped_step``: step at whose start it stopped early (float64, NaN: never);
          ``steps``: optimizer steps taken (int64; ``stopped_step`` for a network stopped early).
    """
    stopped = np.asarray(state.stopped_step).astype(np.int64)
    step = np.where(stopped >= 0, stopped, np.asarray(state.step).astype(np.int64))
    out: dict[str, np.ndarray] = {}
    collapsed = np.zeros(step.shape, bool)
    for split in ("train", "test"):
        acc = np.asarray(final[f"{split}_accuracy"], np.float32)
        loss = np.asarray(final[f"{split}_loss"], np.float32)
        best_acc = np.fmax(np.asarray(getattr(state, f"best_{split}_accuracy"), np.float32), acc)
        prev_loss = np.asarray(getattr(state, f"best_{split}_loss"), np.float32)
        best_loss = np.where(np.isfinite(loss), np.fmin(prev_loss, loss), prev_loss)
        for kind, hit in (("solved", acc >= np.float32(FULL_ACCURACY)), ("full", acc >= 1.0)):
            prev = np.asarray(getattr(state, f"first_{kind}_{split}")).astype(np.int64)
            first = np.where(prev >= 0, prev, np.where(hit, step, -1))
            out[f"first_{kind}_{split}_step"] = np.where(first >= 0, first, np.nan)
        with np.errstate(invalid="ignore"):
            drop = best_acc.astype(np.float64) - acc.astype(np.float64)
            collapsed |= np.isfinite(out[f"first_solved_{split}_step"]) & (drop > COLLAPSE_DROP)
        out[f"best_{split}_accuracy"] = best_acc
        out[f"best_{split}_loss"] = best_loss
    out["generalization_gap"] = out["best_train_accuracy"].astype(np.float64) - out["best_test_accuracy"]
    out["generalization_delay1"] = out["first_solved_test_step"] - out["first_solved_train_step"]
    out["generalization_delay2"] = out["first_full_test_step"] - out["first_full_train_step"]
    out["collapsed"] = collapsed
    nonfinite = np.asarray(state.nonfinite_step).astype(np.int64)
    out["nonfinite_step"] = np.where(nonfinite >= 0, nonfinite, np.nan)
    out["stopped_step"] = np.where(stopped >= 0, stopped, np.nan)
    out["steps"] = step
    return {k: out[k] for k in RECORD_COLUMNS}


@functools.lru_cache(maxsize=64)
def compiled_init(recipe: Recipe):
    return jax.jit(jax.vmap(functools.partial(init_state, recipe)))
