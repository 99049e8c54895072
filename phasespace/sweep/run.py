"""Running a sweep end to end: spec → buckets → training → analysis → files and figures."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from phasespace import hooks
from phasespace.analysis.circuits import CircuitOptions, analyze_full, circuit_columns
from phasespace.analysis.faults import describe_flags
from phasespace.analysis.tracking import MetricsRecorder, aligned_chunk
from phasespace.io import store
from phasespace.io.checkpoint import BucketCheckpoint, LoggedHistory, check_sweep_dir, exclusive_sweep_dir
from phasespace.io.params import save_bucket_params
from phasespace.models.fast import supports_fast
from phasespace.models.registry import family
from phasespace.phase import diagram, figures
from phasespace.population.buckets import Bucket, padding_report, plan_buckets
from phasespace.population.stack import build_population
from phasespace.spec.expand import expand
from phasespace.spec.parse import AXES, SweepSpec, parse_bytes
from phasespace.sweep import segments
from phasespace.training import placement
from phasespace.training.loop import train_population
from phasespace.training.memory import plan_training
from phasespace.training.program import effective_precision
from phasespace.training.step import HISTORY_FIELDS, TrainState, compiled_init

RUN_COLUMNS = (
    "train_loss",
    "test_loss",
    "train_accuracy",
    "test_accuracy",
    "loss",
    "accuracy",
    "gradient_symmetricity",
    "gradient_symmetricity_zero_grads",
    "distance_irrelevance",
    "distance_irrelevance_largest_wrong",
    "circularity",
    "circular",
    "param_norm",
    "first_full_train_step",
    "first_full_test_step",
    "collapsed",
    "nonfinite_step",
    "degenerate",
    "steps",
    "precision",
    "compute",
)
"""Metric columns of ``runs.csv`` (after ``index``, ``bucket`` and every axis of
:data:`phasespace.spec.parse.AXES`; followed by :func:`phasespace.analysis.circuits.circuit_columns`)."""

ARRAYS_FILE = "analysis.npz"
"""Per-network array metrics (circles, per-(a − b) accuracy), run axis in ``runs.csv`` order."""
METRICS_HISTORY_FILE = "metrics_history.npz"
"""Every metric along training (``[analysis] every = N``): ``step`` (T,), metrics (R, T, ...)."""


def environment(spec: SweepSpec) -> dict[str, Any]:
    """Versions, devices and precision of this run (written to ``environment.json``)."""
    versions = {}
    for pkg in ("phasespace", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "process_count": jax.process_count(),
        "precision": spec.train["precision"],
        "precision_effective": effective_precision(spec.train["precision"], jax.default_backend()),
        "analysis_precision": "float32",
        "fast": spec.train["fast"],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def train_bucket(
    bucket: Bucket,
    spec: SweepSpec,
    progress: bool = True,
    on_chunk: Callable[[TrainState, dict[str, np.ndarray]], None] | None = None,
    out_dir: str | None = None,
    checkpoint_dir: str | None = None,
    layouts: dict[str, Any] | None = None,
    started: dict[str, int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train and analyse one bucket.

    Training is sharded over every device (across processes in a ``jax.distributed`` run) in
    groups and host chunks that fit device memory (:mod:`phasespace.training.program`,
    :mod:`phasespace.training.memory`, ``[train] group_size`` / ``memory_limit``); ``layouts``, if given,
    receives the bucket's layout and memory plan under its key, and ``started`` the step the bucket
    starts from (0, a checkpoint's step, or ``train.steps`` when finished earlier).

    Args:
        bucket, spec: the bucket and its sweep's validated spec.
        progress: show a progress bar with ETA.
        on_chunk: called after every chunk with the state and that chunk's history.
        out_dir: if given, the final parameters are saved there
            (:func:`phasespace.io.params.save_bucket_params`).
        checkpoint_dir: if given (``<sweep dir>/checkpoints``), the bucket resumes from its latest
            complete checkpoint under ``<checkpoint_dir>/<bucket key>`` (or returns its recorded
            result when finished), saves every ``train.checkpoint_every`` steps and at the end, and
            records its result (see :mod:`phasespace.io.checkpoint`).

    With ``analysis.every = N > 0`` every metric is also recorded at steps 0, N, 2N, … (chunks
    shortened to divide N) and returned under ``history["metrics_history"]`` (a dict: ``step``
    (T,), metrics (R_bucket, T, ...)); the records are checkpointed with the state.

    Returns:
        ``(rows, history)``: one runs-table row per network (bucket order; array metrics of
        :func:`~phasespace.analysis.circuits.analyze_full` are included under their names, for
        ``analysis.npz``) and training curves subsampled every ``train.log_every`` steps (and
        the last step), each (R_bucket, n_logged), with ``step`` (n_logged,).

    Raises:
        phasespace.io.checkpoint.ResumeError: if a checkpoint was made with a different spec.
    """
    recipe = spec.recipe_for(family(bucket.arch))
    every = int(spec.analysis.get("every", 0))
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = BucketCheckpoint(os.path.join(checkpoint_dir, bucket.key), bucket, spec)
        finished = ckpt.load_result()
        if finished is not None:
            if progress:
                tqdm.write(f"{bucket.key}: finished earlier, rows read from {ckpt.result_path}")
            rows, history = finished
            if started is not None:
                started[bucket.key] = recipe.steps
            rows = [{k: np.asarray(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
            if every > 0:
                history["metrics_history"] = _load_metrics_history(ckpt.directory, recipe.steps)
            return rows, history
    pop = build_population(bucket.arch, [n.spec() for n in bucket.networks])
    t = spec.train
    chunk = aligned_chunk(t["chunk_steps"], every)
    plan = plan_training(
        bucket.arch,
        recipe,
        pop.size,
        chunk,
        memory_limit=parse_bytes(t["memory_limit"]),
        group_size=None if t["group_size"] == "auto" else int(t["group_size"]),
    )
    if layouts is not None:
        layouts[bucket.key] = plan.describe()
    recorder = MetricsRecorder(bucket.arch, pop.hparams, spec.analysis, every) if every > 0 else None
    state, log = None, LoggedHistory(recipe.steps, spec.train["log_every"])
    if ckpt is not None:
        resumed = ckpt.restore(jax.eval_shape(compiled_init(recipe), pop.params, pop.hparams))
        if resumed is not None:
            state, hist = resumed
            log = LoggedHistory(recipe.steps, spec.train["log_every"], int(state.step[0]), hist)
            if recorder is not None:
                recorder.restore(_load_metrics_history(ckpt.directory, log.done))
            if progress:
                tqdm.write(f"{bucket.key}: resuming from the checkpoint of step {log.done}")
    if started is not None:
        started[bucket.key] = log.done
    if recorder is not None and not recorder.steps:
        recorder.record(0, pop.params)
    bar = tqdm(
        total=recipe.steps,
        initial=log.done,
        desc=f"{bucket.key} ({pop.size} networks)",
        unit="step",
        disable=not (progress and placement.is_main_process()),
        dynamic_ncols=True,
    )

    def chunk_done(state: TrainState, h: dict[str, np.ndarray]) -> None:
        bar.update(h["train_loss"].shape[1])
        bar.set_postfix(
            loss=f"{np.nanmean(h['train_loss'][:, -1]):.3g}",
            test_acc=f"{np.nanmean(h['test_accuracy'][:, -1]):.3f}",
        )
        log.add(h)
        if recorder is not None:
            recorder.on_chunk(state._replace(params=placement.tree_to_host(state.params)), h)
        if ckpt is not None and ckpt.due(log.done):
            if recorder is not None:  # written before the state: a restore keeps steps ≤ its own
                store.write_npz(os.path.join(ckpt.directory, METRICS_HISTORY_FILE), recorder.result())
            ckpt.save(state, log.arrays())
        if on_chunk is not None:
            on_chunk(state, h)
        hooks.emit("chunk_done", bucket=bucket.key, step=log.done)

    state, _ = train_population(pop, recipe, chunk, state=state, on_chunk=chunk_done, layout=plan.layout)
    bar.close()
    # The analysis runs on one device from host copies (an XLA-partitioned analysis over several
    # CPU devices can deadlock in their collectives; it costs a few training steps' worth).
    params = placement.tree_to_host(state.params)
    hooks.emit("analysis_start", bucket=bucket.key)
    if (
        recorder is not None
        and recorder.last is not None
        and recorder.steps[-1] == int(np.asarray(state.step)[0])
    ):
        m, arrays = recorder.last
    else:
        m, arrays = analyze_full(bucket.arch, params, pop.hparams, spec.analysis)
    if out_dir is not None and placement.is_main_process():
        idx = [n.index for n in bucket.networks]
        save_bucket_params(out_dir, bucket.key, bucket.arch, idx, params, pop.hparams)
    host = placement.tree_to_host(state._replace(params=None, opt_state=None))
    precision = effective_precision(recipe.precision, jax.default_backend())
    compute = "fast" if recipe.fast and supports_fast(bucket.arch) else "plain"
    rows = []
    for i, net in enumerate(bucket.networks):
        row: dict[str, Any] = {"index": net.index, "bucket": bucket.key, **net.values}
        row.update({k: m[k][i] for k in m})
        row.update({k: arrays[k][i] for k in arrays})
        row["first_full_train_step"] = int(host.first_full_train[i])
        row["first_full_test_step"] = int(host.first_full_test[i])
        row["collapsed"] = bool(host.collapsed[i])
        row["nonfinite_step"] = int(host.nonfinite_step[i])
        row["steps"] = int(host.step[i])
        row["degenerate"] = describe_flags(int(m["degenerate"][i]))
        row["precision"] = precision
        row["compute"] = compute
        rows.append(row)
    history: dict[str, Any] = dict(log.arrays())
    if ckpt is not None:
        if recorder is not None:
            store.write_npz(os.path.join(ckpt.directory, METRICS_HISTORY_FILE), recorder.result())
        ckpt.save_result(rows, history)
    if recorder is not None:
        history["metrics_history"] = recorder.result()
    return rows, history


@exclusive_sweep_dir
def run_sweep(
    spec: SweepSpec, out_dir: str, spec_path: str | None = None, progress: bool = True
) -> store.SweepResult | None:
    """Run a whole sweep and write its directory (see :mod:`phasespace.io.store`).

    If ``out_dir`` already holds a sweep of the same spec (a killed or finished run), it is
    resumed: each bucket continues from its latest complete checkpoint, finished buckets are not
    retrained, and the results are the same as an uninterrupted run's (:mod:`phasespace.io.checkpoint`).

    Args:
        spec: a validated spec.
        out_dir: the sweep directory (created).
        spec_path: the TOML file the spec came from (copied as ``spec.toml``).
        progress: show a progress bar with ETA per bucket.

    In a multi-process (``jax.distributed``) run every process calls this with the same spec and
    trains its shard of every bucket; process 0 alone writes ``out_dir`` (one table). Such a run
    keeps no checkpoints (it is not resumable).

    Returns:
        The written sweep, loaded back (:func:`phasespace.io.store.load_sweep`); None on a process
        other than 0 of a multi-process run that cannot see process 0's directory.

    Raises:
        phasespace.io.checkpoint.ResumeError: before any compute, if ``out_dir`` holds a sweep of a
            different spec (naming the differing fields) or another run is writing it.
    """
    networks = expand(spec)
    buckets = plan_buckets(networks, spec.buckets["max_buckets"], spec.buckets["max_waste"])
    main = placement.is_main_process()
    multi = jax.process_count() > 1
    resuming = check_sweep_dir(out_dir, spec) if main else False  # (exclusive_sweep_dir made it)
    if main:
        store.remove_stale_temporaries(out_dir)
        if spec_path is not None:
            with open(spec_path, "rb") as f:
                store.write_bytes(os.path.join(out_dir, "spec.toml"), f.read())
        store.write_json(os.path.join(out_dir, "spec.json"), spec.to_dict())
    env = environment(spec)
    env["padding"] = padding_report(buckets)
    env, segment = segments.begin(out_dir, env, resuming)  # keeps the first run's record; warns
    if main:
        store.write_json(os.path.join(out_dir, "environment.json"), env)

    t0 = time.perf_counter()
    trained = [0]  # network-steps trained by this call (a resume skips finished work)

    def count(_: TrainState, h: dict[str, np.ndarray]) -> None:
        trained[0] += h["train_loss"].size

    rows: list[dict[str, Any]] = []
    histories: list[tuple[list[int], dict[str, np.ndarray]]] = []
    layouts: dict[str, Any] = {}
    started: dict[str, int] = {}
    for b in buckets:
        ckpt_dir = None if multi else os.path.join(out_dir, "checkpoints")
        r, h = train_bucket(
            b,
            spec,
            progress=progress,
            on_chunk=count,
            out_dir=out_dir,
            checkpoint_dir=ckpt_dir,
            layouts=layouts,
            started=started,
        )
        rows.extend(r)
        histories.append(([n.index for n in b.networks], h))
    wall = time.perf_counter() - t0
    rows.sort(key=lambda r: r["index"])
    if main:
        write_results(spec, out_dir, rows, histories)
    timings: dict[str, Any] = {"wall_seconds": wall, "networks": len(networks)}
    timings["buckets"] = [
        {
            "key": b.key,
            "networks": len(b.networks),
            "d_model": b.arch.d_model,
            "recipe": dataclasses.asdict(spec.recipe_for(family(b.arch))),
            "layout": layouts.get(b.key),
        }
        for b in buckets
    ]
    timings["resumed"] = resuming
    timings["network_steps_this_run"] = trained[0]
    timings["network_steps_per_second"] = trained[0] / wall if trained[0] else None
    # padded_flops_per_step counts one step of every network; scale by the share trained now
    timings["padded_matmul_flops_per_second"] = (
        env["padding"]["padded_flops_per_step"] * trained[0] / len(networks) / wall if trained[0] else None
    )
    env = segments.finish(env, segment, timings, started)
    if main:
        store.write_json(os.path.join(out_dir, "environment.json"), env)
    if multi:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("phasespace: results written")
        if not main and not os.path.exists(os.path.join(out_dir, "runs.csv")):
            return None
    return store.load_sweep(out_dir)


def write_results(
    spec: SweepSpec,
    out_dir: str,
    rows: list[dict[str, Any]],
    histories: list[tuple[list[int], dict[str, np.ndarray]]],
) -> None:
    """Write ``history.npz``, ``analysis.npz``, ``metrics_history.npz`` (when recorded),
    ``phase.npz``, the figures and, last (it marks a finished sweep), ``runs.csv``; each file
    atomically."""
    opts = CircuitOptions.from_mapping(spec.analysis)
    columns = ["index", "bucket", *AXES, *RUN_COLUMNS]
    columns += circuit_columns(opts.n_components // opts.min_circle_components)
    n = len(rows)
    write_array_metrics(os.path.join(out_dir, ARRAYS_FILE), rows)
    tracked = [(idx, h["metrics_history"]) for idx, h in histories if "metrics_history" in h]
    if tracked:
        write_metrics_history(os.path.join(out_dir, METRICS_HISTORY_FILE), n, tracked)
    if histories:
        steps = histories[0][1]["step"]
        hist = {"step": steps}
        for k in HISTORY_FIELDS:
            arr = np.full((n, len(steps)), np.nan, np.float32)
            for idx, h in histories:
                if len(h["step"]) == len(steps):
                    arr[idx] = h[k]
            hist[k] = arr
        store.write_npz(os.path.join(out_dir, "history.npz"), hist)
    runs = {c: np.asarray([r.get(c, np.nan) for r in rows]) for c in columns if c != "bucket"}
    runs["first_full_test_step"] = np.where(
        runs["first_full_test_step"] < 0, np.nan, runs["first_full_test_step"]
    )
    grid = [a for a in spec.grid_axes if a != "data_seed"]
    arrays = diagram.phase_arrays(runs, spec.phase, sampled=spec.sampled_axes)
    if not spec.sampled_axes:
        arrays.update(diagram.grid_arrays(runs, grid))
    store.write_npz(os.path.join(out_dir, "phase.npz"), arrays)
    fig_dir = os.path.join(out_dir, "figures")
    figures.plot_metrics_vs_attention_rate(
        runs, os.path.join(fig_dir, "metrics_vs_attention_rate.png"), title=f"{spec.name}: {n} networks"
    )
    figures.phase_figures(runs, arrays, fig_dir, spec.phase, title=spec.name)
    store.write_csv(os.path.join(out_dir, "runs.csv"), columns, rows)


def _load_metrics_history(directory: str, upto: int) -> dict[str, np.ndarray]:
    """The metrics recorded along training saved beside a bucket's checkpoints, keeping steps
    ≤ ``upto`` (empty if none were saved)."""
    path = os.path.join(directory, METRICS_HISTORY_FILE)
    if not os.path.exists(path):
        return {"step": np.zeros(0, np.int64)}
    with np.load(path) as z:
        saved = {k: z[k] for k in z.files}
    keep = saved["step"] <= upto
    return {k: (v[keep] if k == "step" else v[:, keep]) for k, v in saved.items()}


def default_out_dir(spec: SweepSpec) -> str:
    return os.path.join("runs", spec.name)


def stack_padded(values: list[np.ndarray]) -> np.ndarray:
    """Stack arrays whose shapes may differ between buckets, padding with NaN (float) or −1."""
    shape = tuple(max(v.shape[d] for v in values) for d in range(values[0].ndim))
    kind = np.result_type(*values)
    fill = np.nan if np.issubdtype(kind, np.floating) else -1
    out = np.full((len(values), *shape), fill, dtype=kind)
    for i, v in enumerate(values):
        out[(i, *tuple(slice(0, s) for s in v.shape))] = v
    return out


def write_array_metrics(path: str, rows: list[dict[str, Any]]) -> None:
    """``analysis.npz``: each array metric of :func:`~phasespace.analysis.circuits.circuit_network`
    stacked over the rows (R, ...) (padded with NaN / −1 where buckets differ in shape), with
    ``index`` (R,)."""
    names = [k for k, v in rows[0].items() if isinstance(v, np.ndarray) and v.ndim >= 1] if rows else []
    if not names:
        return
    arrays = {"index": np.asarray([r["index"] for r in rows])}
    for k in names:
        arrays[k] = stack_padded([np.asarray(r[k]) for r in rows])
    store.write_npz(path, arrays)


def write_metrics_history(path: str, n: int, tracked: list[tuple[list[int], dict[str, np.ndarray]]]) -> None:
    """``metrics_history.npz``: ``step`` (T,) and each metric (n, T, ...) in runs-table order
    (NaN / −1 for networks of buckets recorded at other steps)."""
    steps = tracked[0][1]["step"]
    out: dict[str, np.ndarray] = {"step": steps}
    for name in tracked[0][1]:
        if name == "step":
            continue
        parts = [(idx, h[name]) for idx, h in tracked if name in h and np.array_equal(h["step"], steps)]
        sample = parts[0][1]
        fill = np.nan if np.issubdtype(sample.dtype, np.floating) else -1
        dtype = sample.dtype if fill == -1 else np.float32
        arr = np.full((n, *sample.shape[1:]), fill, dtype=dtype)
        for idx, v in parts:
            if v.shape[1:] == sample.shape[1:]:
                arr[idx] = v
        out[name] = arr
    store.write_npz(path, out)
