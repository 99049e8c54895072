"""Accelerator benchmark: throughput per precision mode and the metrics' sensitivity to it.

One command, sized to finish within 8 minutes on one GPU (H100/H200 class)::

    python benchmarks/gpu_bench.py                # on the accelerator
    python benchmarks/gpu_bench.py --smoke        # tiny sizes, runs anywhere (CPU: a check)

It measures, for each precision mode (float32, tensorfloat32, bfloat16; SPEC §4):

1. the device's matmul FLOP/s (chained n × n products) and the relative error of one product
   against float64 — which shows the precision the mode really ran in;
2. for d_model ∈ {32, 128, 512} at p = 59: network-steps/s of a large population (the memory plan
   of phasespace.training.memory picks the group size), and the achieved FLOP/s (analytic count of the fast
   computation, phasespace/population/flops.py) as a fraction of that mode's measured matmul peak;
3. a small fixed population (p = 31, d_model = 64, 12 networks over three attention rates)
   trained in each mode: its phase-diagram metrics and their change from float32 (mean and max
   |Δ|, and how many networks change label: circular, symmetric, distance-dependent — the labels
   of phasespace.analysis.classify at the thresholds of phasespace.defaults).

Results go to ``benchmarks/results/gpu-<date>.json`` and ``.md`` (printed too). A time budget
(``--budget`` seconds, default 420) stops starting new measurements, so partial results are
still written.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp
import numpy as np

from phasespace.analysis import classify
from phasespace.bench.peak import measure_matmul_flops
from phasespace.defaults import PRECISIONS
from phasespace.io import store
from phasespace.models.transformer import TransformerArch
from phasespace.population.flops import step_flops
from phasespace.population.stack import NetworkSpec, build_population
from phasespace.spec.networks import Recipe
from phasespace.training.loop import train_population
from phasespace.training.memory import plan_training
from phasespace.training.program import effective_precision, matmul_precision, train_sharded

METRICS = ("test_accuracy", "gradient_symmetricity", "distance_irrelevance", "circularity", "param_norm")
LABELS = {
    "circular": lambda m: classify.circular_mask(m["circularity"]),
    "symmetric": lambda m: classify.labels(m)["symmetric"] == 1.0,
    "distance_dependent": lambda m: classify.labels(m)["distance_dependent"] == 1.0,
}


def sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "p": 11,
            "populations": {8: 4, 16: 4, 128: 2},
            "steps": 2,
            "matmul_n": 256,
            "metrics": {"p": 7, "d_model": 8, "steps": 20, "seeds": 1},
        }
    return {
        "p": 59,
        "populations": {32: 4096, 128: 1024, 512: 256},
        "steps": 8,
        "matmul_n": 8192,
        "metrics": {"p": 31, "d_model": 64, "steps": 3000, "seeds": 4},
    }


def matmul_error(name: str, n: int = 1024) -> float:
    """Max relative error of one (n × n) float32 product in precision ``name`` vs float64."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(np.float32), rng.standard_normal((n, n)).astype(np.float32)
    with jax.default_matmul_precision(name):
        got = np.asarray(jax.jit(jnp.matmul)(a, b), np.float64)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def throughput(p: int, d: int, r: int, mode: str, steps: int) -> dict[str, Any]:
    """Network-steps/s of R networks of width d in ``mode``: best of 3 timed chunks."""
    arch = TransformerArch(p=p, d_model=d)
    nets = [NetworkSpec(seed=i, attention_rate=(i % 11) / 10, d_model=d) for i in range(r)]
    pop = build_population(arch, nets)
    recipe = Recipe(steps=steps * 4, precision=mode)
    t0 = time.perf_counter()
    plan = plan_training(arch, recipe, r, steps)
    compile_s = time.perf_counter() - t0
    stamps: list[float] = []

    def tick(state: Any, hist: Any) -> None:
        stamps.append(time.perf_counter())

    train_sharded(arch, pop.params, pop.hparams, recipe, plan.layout, steps, on_chunk=tick)
    best = min(b - a for a, b in itertools.pairwise(stamps))
    rate = r * steps / best
    return {
        "d_model": d,
        "R": r,
        "mode": mode,
        "rate": rate,
        "flops": rate * step_flops(arch, fast=True),
        "compile_s": compile_s,
        "group_size": plan.layout.group_size,
        "host_chunks": len(plan.layout.chunks),
        "bytes_per_device": plan.bytes_needed,
    }


def metric_population(cfg: dict[str, Any], mode: str) -> dict[str, np.ndarray]:
    """Train the fixed small population in ``mode`` and return its metrics (float32 analysis)."""
    from phasespace.analysis.circuits import analyze_full

    arch = TransformerArch(p=cfg["p"], d_model=cfg["d_model"])
    nets = [
        NetworkSpec(seed=s, attention_rate=a, d_model=cfg["d_model"])
        for a in (0.0, 0.5, 1.0)
        for s in range(cfg["seeds"])
    ]
    pop = build_population(arch, nets)
    state, _ = train_population(pop, Recipe(steps=cfg["steps"], precision=mode), chunk_steps=500)
    scalars, _ = analyze_full(arch, state.params, pop.hparams)
    return {k: np.asarray(scalars[k], np.float64) for k in METRICS}


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"## GPU benchmark {res['date']} — {res['device_kind']} × {res['device_count']}",
        "",
        f"Command: `{res['command']}` ({res['seconds']:.0f} s); jax {res['versions']['jax']}, "
        f"jaxlib {res['versions']['jaxlib']}; backend {res['backend']}.",
        "",
        "| mode | runs as | matmul TFLOP/s | matmul rel. error vs float64 |",
        "|---|---|---|---|",
    ]
    for mode, m in res["matmul"].items():
        lines.append(
            f"| {mode} | {m['effective']} ({m['name']}) | {m['flops'] / 1e12:.2f} | {m['rel_error']:.2e} |"
        )
    lines += [
        "",
        "| d_model | R | mode | network-steps/s | achieved TFLOP/s | % of mode's matmul peak | compile s "
        "| G | host chunks | GiB/device |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in res["throughput"]:
        peak = res["matmul"][t["mode"]]["flops"]
        lines.append(
            f"| {t['d_model']} | {t['R']} | {t['mode']} | {t['rate']:.0f} | {t['flops'] / 1e12:.2f} | "
            f"{t['flops'] / peak:.0%} | {t['compile_s']:.1f} | {t['group_size']} | {t['host_chunks']} | "
            f"{t['bytes_per_device'] / 2**30:.1f} |"
        )
    if res["metrics"]:
        cfg = res["metrics_config"]
        lines += [
            "",
            f"Metrics of a fixed population (p = {cfg['p']}, d_model = {cfg['d_model']}, "
            f"{3 * cfg['seeds']} networks at α ∈ {{0, 0.5, 1}}, {cfg['steps']} steps) per mode; "
            "Δ = change from float32 (mean |Δ| / max |Δ|); labels: networks whose label changes.",
            "",
            "| mode | " + " | ".join(METRICS) + " | label changes |",
            "|---|" + "---|" * (len(METRICS) + 1),
        ]
        for mode, m in res["metrics"].items():
            cells = []
            for k in METRICS:
                c = f"{m['mean'][k]:.4f}"
                if mode != "float32":
                    c += f" (Δ {m['mean_abs_change'][k]:.1e} / {m['max_abs_change'][k]:.1e})"
                cells.append(c)
            changes = ", ".join(f"{k}: {v}" for k, v in m.get("label_changes", {}).items()) or "–"
            lines.append(f"| {mode} | " + " | ".join(cells) + f" | {changes} |")
    if res.get("skipped"):
        lines += ["", "Skipped (time budget): " + ", ".join(res["skipped"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (runs on CPU in ~1 minute)")
    ap.add_argument(
        "--budget", type=float, default=420.0, help="seconds after which no new measurement starts"
    )
    ap.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output folder")
    ap.add_argument("--modes", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    cfg = sizes(args.smoke)
    plat = jax.devices()[0].platform
    res: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/gpu_bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": len(jax.devices()),
        "platform": platform.platform(),
        "versions": {k: _version(k) for k in ("jax", "jaxlib", "phasespace")},
        "sizes": cfg,
        "matmul": {},
        "throughput": [],
        "metrics": {},
        "metrics_config": cfg["metrics"],
        "skipped": [],
    }

    def over_budget(what: str) -> bool:
        if time.perf_counter() - t_start > args.budget:
            res["skipped"].append(what)
            print(f"budget spent: skipping {what}", flush=True)
            return True
        return False

    for mode in args.modes:
        name = matmul_precision(mode, plat)
        with jax.default_matmul_precision(name):
            err = matmul_error(name)
        res["matmul"][mode] = {
            "name": name,
            "effective": effective_precision(mode, plat),
            "flops": measure_matmul_flops(n=cfg["matmul_n"], precision=name),
            "rel_error": err,
        }
        print(f"matmul {mode}: {res['matmul'][mode]}", flush=True)

    def run_throughput(d: int, r: int) -> None:
        for mode in args.modes:
            if over_budget(f"throughput d_model={d} {mode}"):
                continue
            try:
                t = throughput(cfg["p"], d, r, mode, cfg["steps"])
            except Exception as e:  # record and go on: one failing mode must not lose the rest
                res["skipped"].append(f"throughput d_model={d} {mode}: {type(e).__name__}: {e}"[:300])
                print(f"failed: d_model={d} {mode}: {e}", flush=True)
                continue
            res["throughput"].append(t)
            print(f"throughput: {t}", flush=True)

    def run_metrics() -> None:
        for mode in args.modes:
            if over_budget(f"metrics {mode}"):
                continue
            try:
                m = metric_population(cfg["metrics"], mode)
            except Exception as e:
                res["skipped"].append(f"metrics {mode}: {type(e).__name__}: {e}"[:300])
                continue
            entry: dict[str, Any] = {"mean": {k: float(np.nanmean(v)) for k, v in m.items()}, "values": m}
            base = res["metrics"].get("float32", {}).get("values")
            if base is not None and mode != "float32":
                entry["mean_abs_change"] = {k: float(np.nanmean(np.abs(m[k] - base[k]))) for k in METRICS}
                entry["max_abs_change"] = {k: float(np.nanmax(np.abs(m[k] - base[k]))) for k in METRICS}
                entry["label_changes"] = {k: int(np.sum(f(m) != f(base))) for k, f in LABELS.items()}
            res["metrics"][mode] = entry
            print(f"metrics {mode}: {entry['mean']}", flush=True)

    # Order: the most informative first, so that a tight budget loses the least.
    pops = dict(cfg["populations"])
    order = sorted(pops, key=lambda d: (d != 128, d))  # 128 first, then the others ascending
    run_throughput(order[0], pops[order[0]])
    run_metrics()
    for d in order[1:]:
        run_throughput(d, pops[d])
    res["throughput"].sort(key=lambda t: (t["d_model"], args.modes.index(t["mode"])))
    res["seconds"] = time.perf_counter() - t_start
    md = markdown(res)
    print("\n" + md)
    stamp = res["date"].replace(":", "").replace("-", "")
    base_name = os.path.join(args.out, f"gpu-{'smoke-' if args.smoke else ''}{stamp}")
    for entry in res["metrics"].values():
        entry["values"] = {k: v.tolist() for k, v in entry["values"].items()}
    store.write_json(base_name + ".json", res)
    store.write_text(base_name + ".md", md)
    print(f"wrote {base_name}.json and .md")
    return 0


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
