"""Running a sweep end to end: spec → buckets → training → analysis → files and figures."""

from __future__ import annotations

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

from phasespace import parallel, phase, plots, store
from phasespace.config import AXES, Bucket, SweepSpec, expand, plan_buckets
from phasespace.engine import analyze_sharded, effective_precision
from phasespace.memory import parse_bytes, plan_training
from phasespace.metrics.circuit import CIRCULAR_THRESHOLD
from phasespace.models.fast import supports_fast
from phasespace.population import build_population
from phasespace.train import HISTORY_FIELDS, TrainState, train_population

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
    "steps",
    "precision",
    "compute",
)
"""Metric columns of ``runs.csv`` (after ``index``, ``bucket`` and every axis of
:data:`phasespace.config.AXES`)."""


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
    layouts: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Train and analyse one bucket (sharded over every device; see :mod:`phasespace.engine`).

    ``layouts``, if given, receives the bucket's device layout and memory plan under its key.

    Returns:
        ``(rows, history)``: one runs-table row per network (bucket order) and training curves
        subsampled every ``train.log_every`` steps, each (R_bucket, n_logged).
    """
    recipe = spec.recipe
    pop = build_population(bucket.arch, [n.spec() for n in bucket.networks])
    t = spec.train
    plan = plan_training(
        bucket.arch,
        recipe,
        pop.size,
        t["chunk_steps"],
        memory_limit=parse_bytes(t["memory_limit"]),
        group_size=None if t["group_size"] == "auto" else int(t["group_size"]),
    )
    bar = tqdm(
        total=recipe.steps,
        desc=f"{bucket.key} ({pop.size} networks)",
        unit="step",
        disable=not (progress and parallel.is_main_process()),
        dynamic_ncols=True,
    )

    def chunk_done(state: TrainState, h: dict[str, np.ndarray]) -> None:
        bar.update(h["train_loss"].shape[1])
        bar.set_postfix(
            loss=f"{np.nanmean(h['train_loss'][:, -1]):.3g}",
            test_acc=f"{np.nanmean(h['test_accuracy'][:, -1]):.3f}",
        )
        if on_chunk is not None:
            on_chunk(state, h)

    state, hist = train_population(pop, recipe, t["chunk_steps"], on_chunk=chunk_done, layout=plan.layout)
    bar.close()
    m = analyze_sharded(
        bucket.arch,
        state.params,
        pop.hparams["attention_rate"],
        pop.hparams["attn_scale"],
        pop.hparams["train_mask"],
        plan.layout,
        n_triples=spec.analysis["n_triples"],
        triple_seed=spec.analysis["triple_seed"],
        fast=recipe.fast,
    )
    host = parallel.tree_to_host(state._replace(params=None, opt_state=None))
    precision = effective_precision(recipe.precision, jax.default_backend())
    compute = "fast" if recipe.fast and supports_fast(bucket.arch) else "plain"
    if layouts is not None:
        layouts[bucket.key] = plan.describe()
    rows = []
    for i, net in enumerate(bucket.networks):
        row: dict[str, Any] = {"index": net.index, "bucket": bucket.key, **net.values}
        row.update({k: m[k][i] for k in m})
        row["circular"] = bool(m["circularity"][i] >= CIRCULAR_THRESHOLD)
        row["first_full_train_step"] = int(host.first_full_train[i])
        row["first_full_test_step"] = int(host.first_full_test[i])
        row["collapsed"] = bool(host.collapsed[i])
        row["nonfinite_step"] = int(host.nonfinite_step[i])
        row["steps"] = int(host.step[i])
        row["precision"] = precision
        row["compute"] = compute
        rows.append(row)
    log_every = spec.train["log_every"]
    n_steps = hist["train_loss"].shape[1]
    keep = np.unique(np.r_[np.arange(0, n_steps, log_every), n_steps - 1]) if n_steps else np.zeros(0, int)
    history = {k: hist[k][:, keep] for k in HISTORY_FIELDS}
    history["step"] = keep
    return rows, history


def run_sweep(
    spec: SweepSpec, out_dir: str, spec_path: str | None = None, progress: bool = True
) -> store.SweepResult | None:
    """Run a whole sweep and write its directory (see :mod:`phasespace.store`).

    Args:
        spec: a validated spec.
        out_dir: the sweep directory (created).
        spec_path: the TOML file the spec came from (copied as ``spec.toml``).
        progress: show a progress bar with ETA per bucket.

    Returns:
        The written sweep, loaded back (:func:`phasespace.store.load_sweep`); None on a process
        other than 0 of a multi-host run that cannot see process 0's directory.
    """
    networks = expand(spec)
    buckets = plan_buckets(networks)
    main = parallel.is_main_process()  # in a jax.distributed run every process trains its shard;
    if main:  # process 0 alone writes the one sweep directory
        os.makedirs(out_dir, exist_ok=True)
        if spec_path is not None:
            with open(spec_path, "rb") as f:
                store.write_bytes(os.path.join(out_dir, "spec.toml"), f.read())
        store.write_json(os.path.join(out_dir, "spec.json"), spec.to_dict())
    env = environment(spec)
    if main:
        store.write_json(os.path.join(out_dir, "environment.json"), env)

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    histories: list[tuple[list[int], dict[str, np.ndarray]]] = []
    layouts: dict[str, Any] = {}
    for b in buckets:
        r, h = train_bucket(b, spec, progress=progress, layouts=layouts)
        rows.extend(r)
        histories.append(([n.index for n in b.networks], h))
    wall = time.perf_counter() - t0
    rows.sort(key=lambda r: r["index"])
    env["wall_seconds"] = wall
    env["networks"] = len(networks)
    env["buckets"] = [
        {"key": b.key, "networks": len(b.networks), "d_model": b.arch.d_model, "layout": layouts.get(b.key)}
        for b in buckets
    ]
    env["network_steps_per_second"] = len(networks) * spec.recipe.steps / wall
    if main:
        write_results(spec, out_dir, rows, histories)
        store.write_json(os.path.join(out_dir, "environment.json"), env)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("phasespace: results written")
        if not main and not os.path.exists(os.path.join(out_dir, "runs.csv")):
            return None  # process 0 wrote the results on its own host
    return store.load_sweep(out_dir)


def write_results(
    spec: SweepSpec,
    out_dir: str,
    rows: list[dict[str, Any]],
    histories: list[tuple[list[int], dict[str, np.ndarray]]],
) -> None:
    """Write ``runs.csv``, ``history.npz``, ``phase.npz`` and the figures of a sweep."""
    columns = ["index", "bucket", *AXES, *RUN_COLUMNS]
    store.write_csv(os.path.join(out_dir, "runs.csv"), columns, rows)
    n = len(rows)
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
    runs = {c: np.asarray([r[c] for r in rows]) for c in columns if c != "bucket"}
    runs["first_full_test_step"] = np.where(
        runs["first_full_test_step"] < 0, np.nan, runs["first_full_test_step"]
    )
    grid = [a for a in spec.grid_axes if a != "data_seed"]
    if not spec.sampled_axes:
        store.write_npz(os.path.join(out_dir, "phase.npz"), phase.grid_arrays(runs, grid))
    fig_dir = os.path.join(out_dir, "figures")
    plots.plot_metrics_vs_attention_rate(
        runs, os.path.join(fig_dir, "metrics_vs_attention_rate.png"), title=f"{spec.name}: {n} networks"
    )


def default_out_dir(spec: SweepSpec) -> str:
    return os.path.join("runs", spec.name)
