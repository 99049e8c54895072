"""Minibatch training and early stopping (the reference code's ``batch_size``, ``shuffle=False``
DataLoader and ``early_stop``), checked against direct step-by-step loops of the reference's
semantics and against full-batch training of the same populations."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from phasespace.models.registry import make_model
from phasespace.models.transformer import TransformerArch
from phasespace.population.stack import NetworkSpec, build_population
from phasespace.tasks import all_pairs, n_train, split_order, split_rank, train_mask
from phasespace.training.loop import train_population
from phasespace.training.step import Recipe, batch_mask, make_optimizer, run_record

ARCH = TransformerArch(p=7, d_model=8, n_heads=2)
NETS = [  # different train fractions (24 and 34 of 49 pairs), split seeds and init seeds
    NetworkSpec(seed=0, attention_rate=1.0, d_model=8, train_fraction=0.5, lr=1e-2),
    NetworkSpec(seed=1, attention_rate=0.0, d_model=8, train_fraction=0.7, lr=1e-2, data_seed=5),
    NetworkSpec(seed=2, attention_rate=0.5, d_model=8, train_fraction=0.6, lr=1e-2),
]
STEPS = 12


def _leaves(tree, i=None):
    return [np.asarray(x if i is None else x[i]) for x in jax.tree_util.tree_leaves(tree)]


def _train(recipe, nets=NETS, chunk=STEPS, **kw):
    return train_population(build_population(ARCH, nets, recipe), recipe, chunk_steps=chunk, **kw)


@functools.lru_cache(maxsize=1)
def _full_batch_every_step():
    """Full-batch training of NETS, one chunk per step: (final state, history, params at every step)."""
    steps = []
    state, hist = _train(
        Recipe(steps=STEPS, warmup_steps=2),
        chunk=1,
        on_chunk=lambda s, h: steps.append(jax.tree_util.tree_map(np.asarray, s.params)),
    )
    return state, hist, steps


def test_batch_size_at_least_n_train_is_full_batch_bit_for_bit():
    """batch_size ≥ every network's n_train (one batch per epoch, fixed or shuffled order) gives
    exactly the full-batch run: parameters, optimizer state and history."""
    ref_state, ref_hist, _ = _full_batch_every_step()
    state, hist = _train(Recipe(steps=STEPS, warmup_steps=2, batch_size=ARCH.p**2), chunk=1)
    for a, b in zip(_leaves(ref_state), _leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    for k in ref_hist:
        np.testing.assert_array_equal(ref_hist[k], hist[k])
    assert np.asarray(state.stopped_step).tolist() == [-1, -1, -1]


@functools.lru_cache(maxsize=4)
def _reference_step(recipe):
    """A jitted reference step (one compile for every network and batch): AdamW on the mean
    optax cross-entropy of a batch of pairs padded to B rows (weight 0 on the padding)."""
    model = make_model(ARCH)

    def update(params, opt, lr, wd, alpha, scale, x, y, w):
        def loss(p):
            ce = optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x, alpha, scale), y)
            return jnp.sum(w * ce) / jnp.sum(w)

        tx = make_optimizer(lr, wd, recipe.b1, recipe.b2, recipe.eps, recipe.warmup_steps)
        upd, opt = tx.update(jax.grad(loss)(params), opt, params)
        return optax.apply_updates(params, upd), opt

    def accuracy(params, alpha, scale, x, y, w):
        return jnp.sum(w * (jnp.argmax(model.apply(params, x, alpha, scale), -1) == y)) / jnp.sum(w)

    return jax.jit(update), jax.jit(accuracy)


def _reference_loop(net, recipe, steps):
    """One network trained as the reference code does, on the batches alone: the training pairs
    in the split's order, batches of B (the last smaller), AdamW on the mean cross-entropy of the
    batch (optax's), the scheduler counting optimizer steps; before each step the full test set
    is evaluated and the early-stop counter updated; at the start of each epoch the loop stops
    once the counter reached b. Returns (params, optimizer steps taken)."""
    tokens, labels = all_pairs(ARCH.task)
    order = split_order(ARCH.p, net.split_seed)[: n_train(ARCH.p, net.train_fraction)]
    size = recipe.batch_size
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    test = jnp.asarray(~train_mask(ARCH.p, net.train_fraction, net.split_seed), jnp.float32)
    params = jax.tree_util.tree_map(lambda x: x[0], build_population(ARCH, [net]).params)
    hp = (jnp.float32(net.attention_rate), jnp.float32(1.0 / np.sqrt(net.d_model // ARCH.n_heads)))
    update, accuracy = _reference_step(recipe)
    opt = make_optimizer(net.lr, net.weight_decay).init(params)
    a, b = recipe.early_stop
    count, t = 0, 0
    while t < steps:
        if count >= b:  # start of an epoch
            break
        for idx in batches:
            if t == steps:
                break
            count = count + 1 if float(accuracy(params, *hp, tokens, labels, test)) >= a else 0
            pad = np.r_[idx, np.zeros(size - len(idx), idx.dtype)]
            w = jnp.asarray(np.arange(size) < len(idx), jnp.float32)
            lr, wd = jnp.float32(net.lr), jnp.float32(net.weight_decay)
            params, opt = update(params, opt, lr, wd, *hp, tokens[pad], labels[pad], w)
            t += 1
    return params, t


def test_minibatch_steps_equal_the_reference_loop_and_resume_exactly():
    """Two networks (24 and 34 training pairs, B = 10: batches 10, 10, 4 and 10, 10, 10, 4) for
    12 steps with early_stop = [0, 7] (every evaluation counts): the first stops at the start of
    its 4th epoch (step 9), the second of its 3rd (step 8). Parameters equal a direct loop over
    the batches alone (plain model, optax's cross-entropy) to float32 rounding, and differ from
    full-batch training by far more. A new call from the state after step 4 (as a resume from a
    checkpoint does) continues the same batches: the uninterrupted run exactly."""
    recipe = Recipe(steps=STEPS, warmup_steps=2, batch_size=10, early_stop=(0.0, 7))
    nets = NETS[:2]
    saved = []
    state, hist = _train(
        recipe, nets, 4, on_chunk=lambda s, h: saved.append(jax.tree_util.tree_map(np.asarray, s))
    )
    assert np.asarray(state.stopped_step).tolist() == [9, 8]
    again, rest = _train(recipe, nets, 4, state=saved[0])
    for x, y in zip(_leaves(state), _leaves(again), strict=True):
        np.testing.assert_array_equal(x, y)
    for k in hist:
        np.testing.assert_array_equal(hist[k][:, 4:], rest[k])
    assert run_record(state, {k: hist[k][:, -1] for k in hist})["steps"].tolist() == [9, 8]
    _, _, full_steps = _full_batch_every_step()
    for i, net in enumerate(nets):
        ref, taken = _reference_loop(net, recipe, STEPS)
        assert taken == [9, 8][i]
        ours = _leaves(state.params, i)
        for a, b in zip(ours, _leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6 * np.abs(b).max())
        full = _leaves(full_steps[taken - 1], i)  # full-batch parameters after as many steps
        gap = max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(ours, full, strict=True))
        assert gap > 1e-3
    # the recorded history is of the full splits, before each step: step 0 equals full batch's
    _, full_hist, _ = _full_batch_every_step()
    np.testing.assert_array_equal(hist["train_loss"][:, 0], full_hist["train_loss"][:2, 0])


@functools.lru_cache(maxsize=4)
def _batch_masks(recipe):
    """batch_mask of steps 0 … 14, jitted once per recipe."""
    return jax.jit(jax.vmap(lambda hp, t: batch_mask(recipe, hp, t), in_axes=(None, 0)))


def _epoch_orders(recipe, net, epochs):
    """The training pairs of each epoch in batch order, from batch_mask over the epoch's steps."""
    hp = {
        k: v[0]
        for k, v in build_population(ARCH, [net], recipe).hparams.items()
        if k in ("train_mask", "data_rank", "data_seed")
    }
    n_b = -(-n_train(ARCH.p, net.train_fraction) // recipe.batch_size)
    assert epochs * n_b <= 15
    batches, starts = (np.asarray(x) for x in _batch_masks(recipe)(hp, jnp.arange(15, dtype=jnp.int32)))
    assert starts.tolist() == [t % n_b == 0 for t in range(15)]
    return [[np.flatnonzero(b).tolist() for b in batches[e * n_b : (e + 1) * n_b]] for e in range(epochs)]


def test_batch_orders_fixed_and_shuffled():
    """Fixed order: every epoch is the split's order cut into batches of B. Shuffled: each epoch
    is a permutation of the training set cut into batches of B (the last smaller), different per
    epoch and per network, and the same when drawn again from the same seed."""
    fixed = Recipe(steps=1, batch_size=7)
    shuffled = Recipe(steps=1, batch_size=7, shuffle=True)
    for net in NETS:
        train = set(np.flatnonzero(train_mask(ARCH.p, net.train_fraction, net.split_seed)).tolist())
        order = split_order(ARCH.p, net.split_seed)[: len(train)].tolist()
        want = [sorted(order[i : i + 7]) for i in range(0, len(order), 7)]
        assert _epoch_orders(fixed, net, 2) == [want, want]
        rank = split_rank(ARCH.p, net.train_fraction, net.split_seed)
        assert sorted(rank.tolist()) == list(range(49)) and rank[order].tolist() == list(range(len(order)))
        epochs = _epoch_orders(shuffled, net, 3)
        for batches in epochs:
            flat = [i for b in batches for i in b]
            assert len(flat) == len(train) and set(flat) == train  # a permutation of the training set
            assert [len(b) for b in batches] == [len(b) for b in want]
        assert len({str(e) for e in epochs}) == 3 and epochs[0] != want
        assert _epoch_orders(shuffled, net, 3) == epochs
    # the same split seed (and fraction) gives the same orders whatever the init seed; another differs
    a, b = NETS[0], NetworkSpec(seed=9, attention_rate=0.0, d_model=8, train_fraction=0.5, data_seed=0)
    assert _epoch_orders(shuffled, a, 2) == _epoch_orders(shuffled, b, 2)
    c = NetworkSpec(seed=0, attention_rate=1.0, d_model=8, train_fraction=0.5, data_seed=3)
    assert _epoch_orders(shuffled, a, 2) != _epoch_orders(shuffled, c, 2)


def test_early_stop_freezes_a_network_while_the_others_train_on():
    """Full batch, early_stop = [a, 2] with a reached by some networks only: each stops at the
    first step whose start sees 2 consecutive test accuracies ≥ a in the full-batch history
    (a direct loop); a stopped network's parameters are those of that step, bit for bit, and its
    later history repeats them; the others are bit-identical to the run without early stopping."""
    ref_state, ref_hist, ref_steps = _full_batch_every_step()
    acc = ref_hist["test_accuracy"]
    b = 2
    a = float(np.sort(acc.max(axis=1))[-1])  # the best network's peak: reached by some, not all

    def stop_step(row):
        count = 0
        for t in range(STEPS):
            if count >= b:
                return t
            count = count + 1 if row[t] >= a else 0
        return -1

    want = [stop_step(row) for row in acc]
    assert any(s >= 0 for s in want) and any(s < 0 for s in want), (want, acc)
    state, hist = _train(Recipe(steps=STEPS, warmup_steps=2, early_stop=(a, b)), chunk=1)
    assert np.asarray(state.stopped_step).tolist() == want
    for i, s in enumerate(want):
        if s < 0:
            for x, y in zip(_leaves(state, i), _leaves(ref_state, i), strict=True):
                np.testing.assert_array_equal(x, y)
            for k in hist:
                np.testing.assert_array_equal(hist[k][i], ref_hist[k][i])
        else:
            for x, y in zip(_leaves(state.params, i), _leaves(ref_steps[s - 1], i), strict=True):
                np.testing.assert_array_equal(x, y)
            for k in hist:
                np.testing.assert_array_equal(hist[k][i, :s], ref_hist[k][i, :s])
                np.testing.assert_array_equal(hist[k][i, s:], np.full(STEPS - s, ref_hist[k][i, s]))
            assert np.asarray(state.stop_count)[i] == b
    rec = run_record(state, {k: hist[k][:, -1] for k in hist})
    assert rec["steps"].tolist() == [s if s >= 0 else STEPS for s in want]


def test_population_without_the_data_order_is_refused():
    pop = build_population(ARCH, NETS[:1])
    with pytest.raises(ValueError, match=r"batch_size=4: the population has no minibatch order"):
        train_population(pop, Recipe(steps=2, batch_size=4))
