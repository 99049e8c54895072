"""Running a sweep end to end, stage after stage: spec → buckets → resume → train → analyse →
write (the derived files through :mod:`phasespace.sweep.derived`)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from phasespace import hooks
from phasespace.analysis.circuits import analyze_full
from phasespace.analysis.tracking import MetricsRecorder, aligned_chunk
from phasespace.io import store
from phasespace.io.checkpoint import BucketCheckpoint, LoggedHistory, check_sweep_dir, exclusive_sweep_dir
from phasespace.io.params import save_bucket_params
from phasespace.models.fast import supports_fast
from phasespace.models.registry import family
from phasespace.population.buckets import Bucket, padding_report, plan_buckets
from phasespace.population.stack import Population, build_population
from phasespace.spec.expand import expand
from phasespace.spec.networks import Network, Recipe
from phasespace.spec.parse import SweepSpec, check_sweep_name, parse_bytes
from phasespace.sweep import segments
from phasespace.sweep.derived import (
    METRICS_HISTORY_FILE,
    load_metrics_history,
    metric_values,
    runs_columns,
    write_results,
)
from phasespace.tasks import operation_labels
from phasespace.training import placement
from phasespace.training.loop import train_population
from phasespace.training.memory import Plan, plan_training
from phasespace.training.program import effective_precision
from phasespace.training.step import TrainState, compiled_init, run_record


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


@dataclasses.dataclass
class BucketTraining:
    """One bucket on its way through the stages of :func:`train_bucket`.

    Attributes:
        bucket, recipe: the bucket and its family's recipe.
        analysis: the sweep's ``[analysis]`` options.
        pop: its networks stacked on the run axis.
        chunk: steps per host chunk (dividing ``[analysis] every``).
        plan: its device layout and memory plan (:func:`phasespace.training.memory.plan_training`).
        log: the training curves kept every ``train.log_every`` steps.
        recorder: the metrics along training (``[analysis] every > 0``), else None.
        ckpt: its checkpoints (None: no checkpoints, e.g. a multi-process run).
        state: the state to continue from (None: a fresh start).
    """

    bucket: Bucket
    recipe: Recipe
    analysis: Mapping[str, Any]
    pop: Population
    chunk: int
    plan: Plan
    log: LoggedHistory
    recorder: MetricsRecorder | None
    ckpt: BucketCheckpoint | None
    state: TrainState | None = None


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
    """Train and analyse one bucket: resume → train → analyse → rows. ``started``, if given,
    receives the step the bucket starts from (0, a checkpoint's step, or ``train.steps`` when it
    finished earlier; for this run's segment of ``environment.json``).

    Training is sharded over every device (across processes in a ``jax.distributed`` run) in
    groups and host chunks that fit device memory (:mod:`phasespace.training.program`,
    :mod:`phasespace.training.memory`, ``[train] group_size`` / ``memory_limit``); ``layouts``, if given,
    receives the bucket's layout and memory plan under its key.

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
    ckpt = (
        None
        if checkpoint_dir is None
        else BucketCheckpoint(os.path.join(checkpoint_dir, bucket.key), bucket, spec)
    )
    finished = finished_result(ckpt, spec, progress)
    if finished is not None:
        if started is not None:
            started[bucket.key] = spec.recipe_for(family(bucket.arch)).steps
        return finished
    run = resume_bucket(bucket, spec, ckpt, progress)
    if started is not None:
        started[bucket.key] = run.log.done
    if layouts is not None:
        layouts[bucket.key] = run.plan.describe()
        if ckpt is not None and ckpt.resumed_from is not None:  # another process or device count
            layouts[bucket.key]["resumed_from"] = ckpt.resumed_from
    state = train_stage(run, progress, on_chunk)
    # The analysis runs on one device from host copies (an XLA-partitioned analysis over several
    # CPU devices can deadlock in their collectives; it costs a few training steps' worth).
    params = placement.tree_to_host(state.params)
    scalars, arrays = analyse_stage(run, state, params)
    written = []  # files a resume does not rewrite: their checksums go into the result record
    if out_dir is not None and placement.is_main_process():
        idx = [n.index for n in bucket.networks]
        written.append(save_bucket_params(out_dir, bucket.key, bucket.arch, idx, params, run.pop.hparams))
    rows = bucket_rows(
        run, placement.tree_to_host(state._replace(params=None, opt_state=None)), scalars, arrays
    )
    return rows, record_result(run, rows, written)


def finished_result(
    ckpt: BucketCheckpoint | None, spec: SweepSpec, progress: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """Resume, a finished bucket: its recorded rows and history (None if not finished)."""
    finished = None if ckpt is None else ckpt.load_result()
    if finished is None:
        return None
    if progress:
        tqdm.write(f"{ckpt.key}: finished earlier, rows read from {ckpt.result_path}")
    rows, history = finished
    rows = [{k: np.asarray(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
    if int(spec.analysis.get("every", 0)) > 0:
        history["metrics_history"] = load_metrics_history(ckpt.directory, ckpt.steps)
    return rows, history


def plan_bucket(bucket: Bucket, spec: SweepSpec) -> Plan:
    """The memory plan of a bucket's training (:func:`~phasespace.training.memory.plan_training`
    with the spec's ``[train]`` options; its compiled programs are cached for the training).

    Raises:
        phasespace.training.memory.DeviceMemoryError: if one network does not fit a device.
    """
    t = spec.train
    return plan_training(
        bucket.arch,
        spec.recipe_for(family(bucket.arch)),
        len(bucket.networks),
        aligned_chunk(t["chunk_steps"], int(spec.analysis.get("every", 0))),
        memory_limit=parse_bytes(t["memory_limit"]),
        group_size=None if t["group_size"] == "auto" else int(t["group_size"]),
    )


def resume_bucket(
    bucket: Bucket, spec: SweepSpec, ckpt: BucketCheckpoint | None, progress: bool
) -> BucketTraining:
    """Resume, an unfinished bucket: its population, plan and records, continued from its latest
    complete checkpoint if there is one."""
    recipe = spec.recipe_for(family(bucket.arch))
    every = int(spec.analysis.get("every", 0))
    plan = plan_bucket(bucket, spec)  # before the population: a refused size allocates nothing
    pop = build_population(bucket.arch, [n.spec() for n in bucket.networks], recipe)
    t = spec.train
    chunk = aligned_chunk(t["chunk_steps"], every)
    recorder = MetricsRecorder(bucket.arch, pop.hparams, spec.analysis, every) if every > 0 else None
    log = LoggedHistory(recipe.steps, t["log_every"])
    run = BucketTraining(bucket, recipe, spec.analysis, pop, chunk, plan, log, recorder, ckpt)
    resumed = (
        None if ckpt is None else ckpt.restore(jax.eval_shape(compiled_init(recipe), pop.params, pop.hparams))
    )
    if resumed is not None:
        run.state, hist = resumed
        run.log = LoggedHistory(recipe.steps, t["log_every"], int(run.state.step[0]), hist)
        if recorder is not None:
            recorder.restore(load_metrics_history(ckpt.directory, run.log.done))
        if progress:
            tqdm.write(f"{bucket.key}: resuming from the checkpoint of step {run.log.done}")
    if recorder is not None and not recorder.steps:
        recorder.record(0, pop.params)
    return run


def train_stage(
    run: BucketTraining,
    progress: bool,
    on_chunk: Callable[[TrainState, dict[str, np.ndarray]], None] | None,
) -> TrainState:
    """Train, the bucket's remaining steps chunk by chunk: a progress bar, the logged curves,
    metrics along training, checkpoints and the ``chunk_done`` hook after every chunk."""
    key, recorder, ckpt, log = run.bucket.key, run.recorder, run.ckpt, run.log
    bar = tqdm(
        total=run.recipe.steps,
        initial=log.done,
        desc=f"{key} ({run.pop.size} networks)",
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
            if recorder is not None and ckpt.writer:  # before the state: a restore keeps steps ≤ its own
                store.write_npz(os.path.join(ckpt.directory, METRICS_HISTORY_FILE), recorder.result())
            ckpt.save(state, log.arrays())
        if on_chunk is not None:
            on_chunk(state, h)
        hooks.emit("chunk_done", bucket=key, step=log.done)

    state, _ = train_population(
        run.pop, run.recipe, run.chunk, state=run.state, on_chunk=chunk_done, layout=run.plan.layout
    )
    bar.close()
    return state


def analyse_stage(
    run: BucketTraining, state: TrainState, params: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Analyse, the final parameters (host copies): every metric of
    :func:`~phasespace.analysis.circuits.analyze_full`, reusing the last record of the metrics
    along training when it was taken at the final step."""
    hooks.emit("analysis_start", bucket=run.bucket.key)
    rec = run.recorder
    if rec is not None and rec.last is not None and rec.steps[-1] == int(np.asarray(state.step)[0]):
        return rec.last
    return analyze_full(run.bucket.arch, params, run.pop.hparams, run.analysis)


def bucket_rows(
    run: BucketTraining, host: TrainState, scalars: dict[str, np.ndarray], arrays: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Rows, one per network of the bucket: its axes, every metric and its training record."""
    precision = effective_precision(run.recipe.precision, jax.default_backend())
    compute = "fast" if run.recipe.fast and supports_fast(run.bucket.arch) else "plain"
    record = run_record(host, scalars)
    rows = []
    for i, net in enumerate(run.bucket.networks):
        row: dict[str, Any] = {"index": net.index, "bucket": run.bucket.key, **net.row_values()}
        row.update(metric_values(scalars, arrays, i))
        row.update({k: v[i] for k, v in record.items()})
        row["precision"] = precision
        row["compute"] = compute
        rows.append(row)
    return rows


def record_result(
    run: BucketTraining, rows: list[dict[str, Any]], written: list[str] | None = None
) -> dict[str, Any]:
    """The bucket's history (curves, and metrics along training when recorded), recorded with
    its rows in its checkpoint directory so that a resume skips it; the checksums of
    ``written`` (its params file) and of its metrics history are recorded too, so that a resume
    rewrites a damaged one (:meth:`phasespace.io.checkpoint.BucketCheckpoint.load_result`)."""
    history: dict[str, Any] = dict(run.log.arrays())
    written = list(written or [])
    if run.ckpt is not None:
        if run.recorder is not None and run.ckpt.writer:
            written.append(os.path.join(run.ckpt.directory, METRICS_HISTORY_FILE))
            store.write_npz(written[-1], run.recorder.result())
        run.ckpt.save_result(rows, history, written)
    if run.recorder is not None:
        history["metrics_history"] = run.recorder.result()
    return history


@exclusive_sweep_dir
def run_sweep(
    spec: SweepSpec,
    out_dir: str,
    spec_path: str | None = None,
    progress: bool = True,
    networks: Sequence[Network] | None = None,
) -> store.SweepResult | None:
    """Run a whole sweep and write its directory (see :mod:`phasespace.io.store`), stage after
    stage: resume (the directory) → train and analyse (each bucket, :func:`train_bucket`) →
    write (:func:`phasespace.sweep.derived.write_results`, then the run record).

    If ``out_dir`` already holds a sweep of the same spec (a killed or finished run), it is
    resumed: each bucket continues from its latest complete checkpoint, finished buckets are not
    retrained, and the results are the same as an uninterrupted run's (:mod:`phasespace.io.checkpoint`;
    a finished bucket whose ``params/<key>.npz`` is missing or damaged is re-analysed from its final
    checkpoint, which rewrites it). Nothing is written before the spec's sizes are accepted: on a
    new directory every bucket's memory plan is made first, so a refused size leaves no directory.

    Args:
        spec: a validated spec.
        out_dir: the sweep directory (created).
        spec_path: the TOML file the spec came from (copied as ``spec.toml``).
        progress: show a progress bar with ETA per bucket.
        networks: the networks to train, a part of ``expand(spec)`` (a shard,
            :mod:`phasespace.sweep.shard`, whose spec records the selection); default all of them.

    In a multi-process (``jax.distributed``) run every process calls this with the same spec and
    trains its shard of every bucket; process 0 alone writes ``out_dir`` (one table) and the
    checkpoints, and broadcasts them on a resume: after every process was killed, the same
    command on every host resumes from the last complete checkpoint (with another process or
    device count too, recorded as ``resumed_from`` in the bucket's layout in ``environment.json``).

    Returns:
        The written sweep, loaded back (:func:`phasespace.io.store.load_sweep`); None on a process
        other than 0 of a multi-process run that cannot see process 0's directory.

    Raises:
        phasespace.io.checkpoint.ResumeError: before any compute, if ``out_dir`` holds a sweep of a
            different spec (naming the differing fields) or another run is writing it.
        phasespace.operations.OperationError: before anything is written, if an operation is not
            registered or its function gives invalid labels at a p of the spec.
    """
    networks = expand(spec) if networks is None else sorted(networks, key=lambda n: n.index)
    buckets = plan_buckets(networks, spec.buckets["max_buckets"], spec.buckets["max_waste"])
    main = placement.is_main_process()
    multi = jax.process_count() > 1
    if multi or not (main and check_sweep_dir(out_dir, spec)):
        for b in buckets:  # a refused size claims no directory: nothing is written yet
            plan_bucket(b, spec)
    for op, p in dict.fromkeys((n.values["operation"], n.values["p"]) for n in networks):
        operation_labels(op, p)  # (after the size check) a function failing at p claims no directory
    resuming = prepare_directory(spec, out_dir, spec_path) if main else False
    env = environment(spec)
    env["padding"] = padding_report(buckets)
    env, segment = segments.begin(out_dir, env, resuming)  # keeps the first run's record; warns
    if main:
        store.write_json(os.path.join(out_dir, "environment.json"), env)
    checkpoint_dir = os.path.join(out_dir, "checkpoints")
    trained = train_buckets(buckets, spec, out_dir, checkpoint_dir, progress)
    if main:
        write_results(out_dir, trained.rows, runs_columns(spec), spec, trained.histories)
        timings = environment_record(spec, buckets, trained, resuming, len(networks), env["padding"])
        env = segments.finish(env, segment, timings, trained.started)
        store.write_json(os.path.join(out_dir, "environment.json"), env)
    if multi:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("phasespace: results written")
        if not main and not os.path.exists(os.path.join(out_dir, "runs.csv")):
            return None
    return store.load_sweep(out_dir)


def prepare_directory(spec: SweepSpec, out_dir: str, spec_path: str | None) -> bool:
    """Resume: check ``out_dir`` against ``spec`` (before any compute), clear stale temporary
    files and write ``spec.toml`` / ``spec.json``; True if this run resumes a sweep."""
    resuming = check_sweep_dir(out_dir, spec)  # (exclusive_sweep_dir made it)
    store.remove_stale_temporaries(out_dir)
    if spec_path is not None:
        with open(spec_path, "rb") as f:
            store.write_bytes(os.path.join(out_dir, "spec.toml"), f.read())
    store.write_json(os.path.join(out_dir, "spec.json"), spec.resolved())
    return resuming


@dataclasses.dataclass
class TrainedBuckets:
    """The result of :func:`train_buckets`: ``rows`` (runs-table order), ``histories`` (per
    bucket: network positions and history), ``layouts`` (per bucket key), ``network_steps``
    trained by this call (a resume skips finished work), its ``wall_seconds`` and the step each
    bucket ``started`` from."""

    rows: list[dict[str, Any]]
    histories: list[tuple[list[int], dict[str, Any]]]
    layouts: dict[str, Any]
    network_steps: int
    wall_seconds: float
    started: dict[str, int] = dataclasses.field(default_factory=dict)


def train_buckets(
    buckets: list[Bucket], spec: SweepSpec, out_dir: str, checkpoint_dir: str | None, progress: bool
) -> TrainedBuckets:
    """Train and analyse every bucket (:func:`train_bucket`), one after the other."""
    t0 = time.perf_counter()
    trained = [0]

    def count(_: TrainState, h: dict[str, np.ndarray]) -> None:
        trained[0] += h["train_loss"].size

    rows: list[dict[str, Any]] = []
    histories: list[tuple[list[int], dict[str, Any]]] = []
    layouts: dict[str, Any] = {}
    started: dict[str, int] = {}
    position = {i: k for k, i in enumerate(sorted(n.index for b in buckets for n in b.networks))}  # row
    for b in buckets:
        r, h = train_bucket(
            b,
            spec,
            progress=progress,
            on_chunk=count,
            out_dir=out_dir,
            checkpoint_dir=checkpoint_dir,
            layouts=layouts,
            started=started,
        )
        rows.extend(r)
        histories.append(([position[n.index] for n in b.networks], h))
    rows.sort(key=lambda r: r["index"])
    return TrainedBuckets(rows, histories, layouts, trained[0], time.perf_counter() - t0, started)


def environment_record(
    spec: SweepSpec,
    buckets: list[Bucket],
    trained: TrainedBuckets,
    resuming: bool,
    n_networks: int,
    padding: Mapping[str, Any],
) -> dict[str, Any]:
    """The run's part of ``environment.json``: wall time, buckets, throughput."""
    wall, steps = trained.wall_seconds, trained.network_steps
    return {
        "wall_seconds": wall,
        "networks": n_networks,
        "buckets": [
            {
                "key": b.key,
                "networks": len(b.networks),
                "d_model": b.arch.d_model,
                "recipe": dataclasses.asdict(spec.recipe_for(family(b.arch))),
                "layout": trained.layouts.get(b.key),
            }
            for b in buckets
        ],
        "resumed": resuming,
        "network_steps_this_run": steps,
        "network_steps_per_second": steps / wall if steps else None,
        # padded_flops_per_step counts one step of every network; scale by the share trained now
        "padded_matmul_flops_per_second": (
            padding["padded_flops_per_step"] * steps / n_networks / wall if steps else None
        ),
    }


def default_out_dir(spec: SweepSpec) -> str:
    """``runs/<name>``; the name is one safe path component, so this never leaves ``runs/``."""
    return os.path.join("runs", check_sweep_name(spec.name))
