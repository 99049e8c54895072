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

from phasespace import phase, plots, store
from phasespace.analysis import analyze_population
from phasespace.buckets import padding_report
from phasespace.config import AXES, Bucket, SweepSpec, expand, plan_buckets
from phasespace.metrics.circuit import CIRCULAR_THRESHOLD
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
        "precision": spec.train["precision"],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def train_bucket(
    bucket: Bucket,
    spec: SweepSpec,
    progress: bool = True,
    on_chunk: Callable[[TrainState, dict[str, np.ndarray]], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Train and analyse one bucket.

    Returns:
        ``(rows, history)``: one runs-table row per network (bucket order) and training curves
        subsampled every ``train.log_every`` steps, each (R_bucket, n_logged).
    """
    recipe = spec.recipe
    pop = build_population(bucket.arch, [n.spec() for n in bucket.networks])
    bar = tqdm(
        total=recipe.steps,
        desc=f"{bucket.key} ({pop.size} networks)",
        unit="step",
        disable=not progress,
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

    state, hist = train_population(pop, recipe, spec.train["chunk_steps"], on_chunk=chunk_done)
    bar.close()
    m = analyze_population(
        bucket.arch,
        state.params,
        pop.hparams["attention_rate"],
        pop.hparams["attn_scale"],
        pop.hparams["train_mask"],
        n_triples=spec.analysis["n_triples"],
        triple_seed=spec.analysis["triple_seed"],
    )
    host = jax.tree_util.tree_map(np.asarray, state._replace(params=None, opt_state=None))
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
        rows.append(row)
    log_every = spec.train["log_every"]
    n_steps = hist["train_loss"].shape[1]
    keep = np.unique(np.r_[np.arange(0, n_steps, log_every), n_steps - 1]) if n_steps else np.zeros(0, int)
    history = {k: hist[k][:, keep] for k in HISTORY_FIELDS}
    history["step"] = keep
    return rows, history


def run_sweep(
    spec: SweepSpec, out_dir: str, spec_path: str | None = None, progress: bool = True
) -> store.SweepResult:
    """Run a whole sweep and write its directory (see :mod:`phasespace.store`).

    Args:
        spec: a validated spec.
        out_dir: the sweep directory (created).
        spec_path: the TOML file the spec came from (copied as ``spec.toml``).
        progress: show a progress bar with ETA per bucket.

    Returns:
        The written sweep, loaded back (:func:`phasespace.store.load_sweep`).
    """
    networks = expand(spec)
    buckets = plan_buckets(networks, spec.buckets["max_buckets"], spec.buckets["max_waste"])
    os.makedirs(out_dir, exist_ok=True)
    if spec_path is not None:
        with open(spec_path, "rb") as f:
            store.write_bytes(os.path.join(out_dir, "spec.toml"), f.read())
    store.write_json(os.path.join(out_dir, "spec.json"), spec.to_dict())
    env = environment(spec)
    env["padding"] = padding_report(buckets)
    store.write_json(os.path.join(out_dir, "environment.json"), env)

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    histories: list[tuple[list[int], dict[str, np.ndarray]]] = []
    for b in buckets:
        r, h = train_bucket(b, spec, progress=progress)
        rows.extend(r)
        histories.append(([n.index for n in b.networks], h))
    wall = time.perf_counter() - t0
    rows.sort(key=lambda r: r["index"])
    write_results(spec, out_dir, rows, histories)
    env["wall_seconds"] = wall
    env["networks"] = len(networks)
    env["buckets"] = [{"key": b.key, "networks": len(b.networks), "d_model": b.arch.d_model} for b in buckets]
    env["network_steps_per_second"] = len(networks) * spec.recipe.steps / wall
    env["padded_matmul_flops_per_second"] = env["padding"]["padded_flops_per_step"] * spec.recipe.steps / wall
    store.write_json(os.path.join(out_dir, "environment.json"), env)
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
    arrays = phase.phase_arrays(runs, spec.phase, sampled=spec.sampled_axes)
    if not spec.sampled_axes:
        arrays.update(phase.grid_arrays(runs, grid))
    store.write_npz(os.path.join(out_dir, "phase.npz"), arrays)
    fig_dir = os.path.join(out_dir, "figures")
    plots.plot_metrics_vs_attention_rate(
        runs, os.path.join(fig_dir, "metrics_vs_attention_rate.png"), title=f"{spec.name}: {n} networks"
    )
    plots.phase_figures(runs, arrays, fig_dir, spec.phase, title=spec.name)


def default_out_dir(spec: SweepSpec) -> str:
    return os.path.join("runs", spec.name)
