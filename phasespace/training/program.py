"""The training program of a population laid out on devices.

:mod:`phasespace.training.step` defines what happens to ONE network (``train_chunk``); this module runs
it for a whole population according to a :class:`phasespace.training.placement.Layout`: padded to a
multiple of the device count, sharded over the run axis (``shard_map``), G networks vmapped at a
time on each device (``lax.map``), in host chunks when the population state does not fit, in the
run's matmul precision. On a CPU (one process) every device instead runs its own copy of the same
one-device program (:func:`device_chunks`), so that a network's numbers do not depend on the device
count. Every compiled program is built ahead of time
(``jit(...).lower(...).compile()``), so its memory analysis is known before it runs
(:mod:`phasespace.training.memory`). The analysis pass (:mod:`phasespace.analysis.network`,
:mod:`phasespace.analysis.circuits`) runs afterwards on the trained parameters, in float32.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from phasespace.models.registry import make_model
from phasespace.models.transformer import TransformerArch
from phasespace.spec.networks import Recipe
from phasespace.tasks import all_pairs
from phasespace.training import placement
from phasespace.training.step import HISTORY_FIELDS, TrainState, init_state, train_chunk

PRECISION_NAMES = {
    # mode → (name on CPU, name on accelerators) for jax.default_matmul_precision
    "float32": ("highest", "highest"),
    "tensorfloat32": ("highest", "tensorfloat32"),
    "bfloat16": ("highest", "BF16_BF16_F32"),
}
"""How each precision mode (SPEC §4) reaches the compiled programs. ``"highest"`` is exact float32
everywhere; on GPUs ``"tensorfloat32"`` lets XLA use TF32 tensor cores and ``"BF16_BF16_F32"``
rounds matmul inputs to bfloat16 with float32 accumulation. XLA:CPU has no TF32 and computes a
bf16 dot algorithm in float32 anyway, so on CPU every mode runs (and is recorded) as float32."""


def matmul_precision(precision: str, platform: str) -> str:
    """The ``jax.default_matmul_precision`` name for a precision mode on a platform.

    Raises:
        ValueError: for an unknown mode, naming the allowed ones.
    """
    if precision not in PRECISION_NAMES:
        raise ValueError(f"precision={precision!r}: must be one of {list(PRECISION_NAMES)}")
    cpu, accel = PRECISION_NAMES[precision]
    return cpu if platform == "cpu" else accel


def effective_precision(precision: str, platform: str) -> str:
    """The mode the matmuls actually run in: ``precision``, or ``"float32"`` on CPU."""
    return "float32" if matmul_precision(precision, platform) == "highest" else precision


def _platform(layout: placement.Layout) -> str:
    return layout.mesh.devices.flat[0].platform


# --------------------------------------------------------------------------------------------- #
# Shapes


def _struct(tree: Any, n: int, sharding: NamedSharding) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((n, *x.shape), x.dtype, sharding=sharding), tree
    )


@functools.lru_cache(maxsize=64)
def _one_state_shape(arch: TransformerArch, recipe: Recipe) -> tuple[Any, Any]:
    def init(key: jax.Array) -> Any:
        tokens = jnp.zeros((1, arch.n_ctx), jnp.int32)
        return make_model(arch).init(key, tokens, jnp.float32(1.0), jnp.float32(1.0))

    params = jax.eval_shape(init, jax.random.key(0))
    hp = {
        "attention_rate": jax.ShapeDtypeStruct((), jnp.float32),
        "attn_scale": jax.ShapeDtypeStruct((), jnp.float32),
        "lr": jax.ShapeDtypeStruct((), jnp.float32),
        "weight_decay": jax.ShapeDtypeStruct((), jnp.float32),
        "train_mask": jax.ShapeDtypeStruct((arch.p * arch.p,), jnp.bool_),
        "labels": jax.ShapeDtypeStruct((arch.p * arch.p,), jnp.int32),
    }
    if recipe.batch_size is not None:  # the data order (phasespace.population.stack.network_hparams)
        if recipe.shuffle:
            hp["data_seed"] = jax.ShapeDtypeStruct((), jnp.uint32)
        else:
            hp["data_rank"] = jax.ShapeDtypeStruct((arch.p * arch.p,), jnp.int32)
    state = jax.eval_shape(functools.partial(init_state, recipe), params, hp)
    return state, hp


def state_bytes_per_network(arch: TransformerArch, recipe: Recipe) -> int:
    """Bytes of one network's training state and per-network data (parameters, AdamW moments,
    counters, hyperparameters, train mask, labels, minibatch order)."""
    state, hp = _one_state_shape(arch, recipe)
    leaves = jax.tree_util.tree_leaves((state, hp))
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves))


# --------------------------------------------------------------------------------------------- #
# Training


@functools.lru_cache(maxsize=64)
def compiled_sharded_chunk(
    arch: TransformerArch, recipe: Recipe, n_steps: int, layout: placement.Layout, n_padded: int
) -> Any:
    """The compiled training chunk of ``n_padded`` networks laid out by ``layout``.

    Call as ``fn(state, hp, tokens)`` with ``state``/``hp`` global arrays of leading size
    ``n_padded`` sharded ``P("runs")`` (``state`` is donated; ``hp["labels"]`` holds each
    network's labels) and ``tokens`` replicated; returns ``(state, history)`` with history leaves
    (n_padded, n_steps).
    """
    return lowered_sharded_chunk(arch, recipe, n_steps, layout, n_padded).compile()


def _lower(
    jitted: Any, arch: TransformerArch, recipe: Recipe, n: int, per_network: Any, replicated: Any
) -> Any:
    """Lower a training chunk ``fn(state, hp, tokens)`` for ``n`` networks: the state and
    hyperparameters (run axis n; the labels among them) placed by ``per_network``, the p² token
    table by ``replicated``."""
    state1, hp1 = _one_state_shape(arch, recipe)
    n_pairs, n_ctx = arch.p * arch.p, arch.n_ctx
    return jitted.lower(
        _struct(state1, n, per_network),
        _struct(hp1, n, per_network),
        jax.ShapeDtypeStruct((n_pairs, n_ctx), jnp.int32, sharding=replicated),
    )


def lowered_sharded_chunk(
    arch: TransformerArch, recipe: Recipe, n_steps: int, layout: placement.Layout, n_padded: int
) -> Any:
    """The lowered (StableHLO) program of :func:`compiled_sharded_chunk`; its text shows the
    matmul precision that reaches the compiler."""
    mesh = layout.mesh
    name = matmul_precision(recipe.precision, _platform(layout))

    def one(state: TrainState, hp: dict[str, jax.Array], tokens: jax.Array):
        with jax.default_matmul_precision(name):
            return train_chunk(arch, recipe, n_steps, state, hp, tokens)

    fn = placement.sharded_map(one, mesh, layout.group_size, n_sharded=2, n_replicated=1)
    jitted = jax.jit(fn, donate_argnums=(0,))
    runs, rep = NamedSharding(mesh, P(placement.AXIS)), NamedSharding(mesh, P())
    return _lower(jitted, arch, recipe, n_padded, runs, rep)


# --------------------------------------------------------------------------------------------- #
# One program per device (CPU)


@functools.lru_cache(maxsize=64)
def _jitted_device_chunk(arch: TransformerArch, recipe: Recipe, n_steps: int, group_size: int, platform: str):
    name = matmul_precision(recipe.precision, platform)

    def one(args: tuple[Any, Any], tokens: jax.Array):
        with jax.default_matmul_precision(name):
            return train_chunk(arch, recipe, n_steps, *args, tokens)

    def per_device(state: TrainState, hp: dict[str, jax.Array], tokens: jax.Array):
        return jax.lax.map(lambda xs: one(xs, tokens), (state, hp), batch_size=group_size)

    return jax.jit(per_device, donate_argnums=(0,))


def lowered_device_chunk(
    arch: TransformerArch, recipe: Recipe, n_steps: int, group_size: int, n_local: int, device: jax.Device
) -> Any:
    """The lowered one-device training chunk of ``n_local`` networks on ``device``, G =
    ``group_size`` vmapped at a time (see :func:`phasespace.training.placement.per_device_programs`).
    Call the compiled program as ``fn(state, hp, tokens)`` with arrays on ``device``
    (``state`` is donated)."""
    sharding = jax.sharding.SingleDeviceSharding(device)
    jitted = _jitted_device_chunk(arch, recipe, n_steps, min(group_size, n_local), device.platform)
    return _lower(jitted, arch, recipe, n_local, sharding, sharding)


@functools.lru_cache(maxsize=256)
def compiled_device_chunk(
    arch: TransformerArch, recipe: Recipe, n_steps: int, group_size: int, n_local: int, device: jax.Device
) -> Any:
    """:func:`lowered_device_chunk`, compiled (cached)."""
    return lowered_device_chunk(arch, recipe, n_steps, group_size, n_local, device).compile()


def device_chunks(
    arch: TransformerArch, recipe: Recipe, n_steps: int, layout: placement.Layout, n_local: int, n_used: int
) -> list[Any]:
    """The compiled one-device programs of the first ``n_used`` devices of ``layout``: the same
    program compiled once per device (XLA binds an executable to its device), the compilations
    running in parallel threads (XLA releases the GIL while it compiles)."""
    devices = list(layout.mesh.devices.flat[:n_used])
    g = layout.group_size
    first = compiled_device_chunk(arch, recipe, n_steps, g, n_local, devices[0])  # traces once
    if len(devices) == 1:
        return [first]
    with concurrent.futures.ThreadPoolExecutor(len(devices) - 1) as pool:
        rest = pool.map(lambda d: compiled_device_chunk(arch, recipe, n_steps, g, n_local, d), devices[1:])
        return [first, *rest]


def _to_device(tree: Any, device: jax.Device) -> Any:
    return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x), device), tree)


def _train_per_device(
    arch: TransformerArch,
    params: Any,
    hparams: dict[str, Any],
    recipe: Recipe,
    layout: placement.Layout,
    chunk_steps: int,
    state: TrainState | None,
    on_chunk: Callable[[TrainState, dict[str, np.ndarray]], None] | None,
) -> tuple[TrainState, dict[str, np.ndarray]]:
    """:func:`train_sharded` with one one-device program per device
    (:func:`phasespace.training.placement.per_device_programs`): each host chunk is split into
    contiguous slices of n_local networks, slice j on device j."""
    n = layout.n_networks
    devices = list(layout.mesh.devices.flat)
    tokens, _ = all_pairs(arch.task)  # the labels are per network, in hparams["labels"]
    if state is None:  # zero moments and counters: exact, computed on the host's first device
        with jax.default_matmul_precision("highest"):
            state = _compiled_init(recipe, placement.run_mesh(devices[:1]))(params, hparams)
    pieces = []  # per host chunk: (n_local, [(start, stop, device index)])
    for a, b in layout.chunks:
        n_local, slices = placement.device_slices(b - a, len(devices))
        pieces.append((n_local, [(a + s, a + e, j) for j, (s, e) in enumerate(slices)]))
    single = len(pieces) == 1
    data = {j: _to_device((tokens,), devices[j]) for _, sl in pieces for *_, j in sl}

    def put(tree: Any, a: int, b: int, n_local: int, j: int) -> Any:
        return _to_device(placement.pad_runs(_slice_runs(tree, a, b), n_local), devices[j])

    hps = [[put(hparams, a, b, m, j) for a, b, j in sl] for m, sl in pieces]
    held: list[list[Any]] = [[put(state, a, b, m, j) for a, b, j in sl] for m, sl in pieces] if single else []
    host = placement.tree_to_host(state)
    done = int(np.asarray(host.step).reshape(-1)[0])
    hist: dict[str, list[np.ndarray]] = {k: [] for k in HISTORY_FIELDS}
    while done < recipe.steps:
        k = min(chunk_steps, recipe.steps - done)
        parts: list[Any] = []
        hs: list[dict[str, np.ndarray]] = []
        for i, (m, sl) in enumerate(pieces):
            fns = device_chunks(arch, recipe, k, layout, m, len(sl))
            sts = held[i] if single else [put(host, a, b, m, j) for a, b, j in sl]
            outs = [fn(st, hp, *data[j]) for fn, st, hp, (*_, j) in zip(fns, sts, hps[i], sl, strict=True)]
            if single:
                held[i] = [st for st, _ in outs]
            for (st, h), (a, b, _) in zip(outs, sl, strict=True):
                parts.append(_slice_runs(st, 0, b - a))
                hs.append({key: np.asarray(v)[: b - a] for key, v in h.items()})
        host = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *parts)
        h_all = {key: np.concatenate([h[key] for h in hs], axis=0) for key in HISTORY_FIELDS}
        for key in HISTORY_FIELDS:
            hist[key].append(h_all[key])
        done += k
        if on_chunk is not None:
            on_chunk(host, h_all)
    out = {k: (np.concatenate(v, axis=1) if v else np.zeros((n, 0), np.float32)) for k, v in hist.items()}
    return host, out


# --------------------------------------------------------------------------------------------- #
# One SPMD program over the mesh


@functools.lru_cache(maxsize=64)
def _compiled_init(recipe: Recipe, mesh: Any) -> Any:
    runs = NamedSharding(mesh, P(placement.AXIS))
    return jax.jit(jax.vmap(functools.partial(init_state, recipe)), out_shardings=runs)


def _slice_runs(tree: Any, start: int, stop: int) -> Any:
    return jax.tree_util.tree_map(lambda x: placement.to_host(x)[start:stop], tree)


def train_sharded(
    arch: TransformerArch,
    params: Any,
    hparams: dict[str, Any],
    recipe: Recipe,
    layout: placement.Layout,
    chunk_steps: int = 500,
    state: TrainState | None = None,
    on_chunk: Callable[[TrainState, dict[str, np.ndarray]], None] | None = None,
) -> tuple[TrainState, dict[str, np.ndarray]]:
    """Train R networks for ``recipe.steps`` steps laid out by ``layout`` (see
    :func:`phasespace.training.loop.train_population`, which calls this).

    Args:
        arch: the bucket.
        params, hparams: the population's parameters and per-network data, leaves (R, ...).
        recipe: static recipe.
        layout: devices, group size and host chunk.
        chunk_steps: steps per compiled call.
        state: state to continue from (leaves (R, ...); equal ``step`` across networks).
        on_chunk: called after each chunk with the state (leaves (R, ...)) and the chunk's
            history (NumPy, (R, K)).

    Returns:
        ``(state, history)``: final state, leaves (R, ...) (device arrays; host NumPy arrays in a
        multi-process run or when trained in several host chunks), and each of
        :data:`~phasespace.training.step.HISTORY_FIELDS` as float32 (R, steps run).
    """
    if chunk_steps <= 0:
        raise ValueError(f"chunk_steps={chunk_steps}: must be a positive number of steps")
    if placement.per_device_programs(layout):
        return _train_per_device(arch, params, hparams, recipe, layout, chunk_steps, state, on_chunk)
    n = layout.n_networks
    mesh = layout.mesh
    tokens, _ = all_pairs(arch.task)  # the labels are per network, in hparams["labels"]
    tokens_d = placement.put_replicated(tokens, mesh)
    pieces = layout.chunks
    single = len(pieces) == 1

    def device_piece(i: int, st: Any) -> tuple[Any, Any]:
        a, b = pieces[i]
        m = layout.padded(b - a)
        hp = placement.put_runs(placement.pad_runs(_slice_runs(hparams, a, b), m), mesh)
        if st is None:
            p = placement.put_runs(placement.pad_runs(_slice_runs(params, a, b), m), mesh)
            with jax.default_matmul_precision("highest"):
                st = _compiled_init(recipe, mesh)(p, hp)
        else:
            st = placement.put_runs(placement.pad_runs(_slice_runs(st, a, b), m), mesh)
        return st, hp

    states: list[Any] = []
    hps: list[Any] = []
    for i, (a, b) in enumerate(pieces):
        st, hp = device_piece(i, None if state is None else _slice_runs(state, a, b))
        if not single:
            st = placement.tree_to_host(st)
        states.append(st)
        hps.append(hp)

    done = int(np.asarray(placement.to_host(states[0].step)).reshape(-1)[0])
    hist: dict[str, list[np.ndarray]] = {k: [] for k in HISTORY_FIELDS}
    while done < recipe.steps:
        k = min(chunk_steps, recipe.steps - done)
        parts: list[dict[str, np.ndarray]] = []
        for i, (a, b) in enumerate(pieces):
            m = layout.padded(b - a)
            fn = compiled_sharded_chunk(arch, recipe, k, layout, m)
            st = states[i] if single else placement.put_runs(placement.pad_runs(states[i], m), mesh)
            st, h = fn(st, hps[i], tokens_d)
            states[i] = st if single else _slice_runs(placement.tree_to_host(st), 0, b - a)
            parts.append({key: placement.to_host(v)[: b - a] for key, v in h.items()})
        h_all = {key: np.concatenate([pt[key] for pt in parts], axis=0) for key in HISTORY_FIELDS}
        for key in HISTORY_FIELDS:
            hist[key].append(h_all[key])
        done += k
        if on_chunk is not None:
            on_chunk(_full_state(states, single, n), h_all)
    out = {k: (np.concatenate(v, axis=1) if v else np.zeros((n, 0), np.float32)) for k, v in hist.items()}
    return _full_state(states, single, n), out


def _full_state(states: list[Any], single: bool, n: int) -> Any:
    if not single:
        return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *states)
    st = states[0]
    if not all(x.is_fully_addressable for x in jax.tree_util.tree_leaves(st)):
        return _slice_runs(placement.tree_to_host(st), 0, n)  # multi-process: host copies
    if jax.tree_util.tree_leaves(st)[0].shape[0] == n:
        return st
    return jax.tree_util.tree_map(lambda x: x[:n], st)
