"""Throughput benchmark: ``python benchmarks/bench.py`` (or ``phasespace bench``).

Measured side by side in one run, at p = 59 by default:

* network-steps/s of the engine for populations R ∈ {1, 16, 64, 256} at d_model ∈ {32, 128},
  with the exact fast computation and (for some R) the plain one;
* the same networks trained one at a time through the engine (a population of one, on one
  device: the steady rate of training them sequentially);
* a straightforward PyTorch one-network-at-a-time loop of the same architecture and recipe
  (:mod:`phasespace.bench.torch_reference`; skipped with a message when torch is absent);
* the machine's measured float32 matmul FLOP/s, and the engine's achieved FLOP/s (analytic
  count per network-step, :mod:`phasespace.population.flops`) as a fraction of it;
* the compile time of each training program against R.

Every rate is the best of ``--repeats`` timed chunks after a warm-up chunk, so a busy machine
lowers the numbers less. The results are printed and appended to ``benchmarks/RESULTS.md`` (with
the machine, versions, date, command and load average) and written as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

DEFAULT_RESULTS = os.path.join("benchmarks", "RESULTS.md")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def engine_rate(
    p: int, d_model: int, n_networks: int, fast: bool, steps: int, repeats: int, precision: str = "float32"
) -> dict[str, Any]:
    """Network-steps/s of the engine training ``n_networks`` networks of width ``d_model``.

    The population has seeds 0…R−1 and attention rates spread over [0, 1]. The training program
    (``steps`` steps per chunk) is planned and compiled first (timed: ``compile_s``), then
    ``repeats + 1`` chunks run; the first (page-faulting fresh buffers) is discarded.

    Returns:
        dict with ``rate`` (network-steps/s, best chunk), ``compile_s``, ``group_size``,
        ``devices``, ``chunk_s`` (best chunk seconds).
    """
    from phasespace.models.transformer import TransformerArch
    from phasespace.population.stack import NetworkSpec, build_population
    from phasespace.spec.networks import Recipe
    from phasespace.training.memory import plan_training
    from phasespace.training.program import train_sharded

    arch = TransformerArch(p=p, d_model=d_model)
    nets = [NetworkSpec(seed=i, attention_rate=(i % 11) / 10, d_model=d_model) for i in range(n_networks)]
    pop = build_population(arch, nets)
    recipe = Recipe(steps=steps * (repeats + 1), fast=fast, precision=precision)
    t0 = time.perf_counter()
    plan = plan_training(arch, recipe, n_networks, steps)
    compile_s = time.perf_counter() - t0
    stamps: list[float] = []
    train_sharded(
        arch,
        pop.params,
        pop.hparams,
        recipe,
        plan.layout,
        steps,
        on_chunk=lambda s, h: stamps.append(time.perf_counter()),
    )
    best = min(b - a for a, b in itertools.pairwise(stamps))
    return {
        "rate": n_networks * steps / best,
        "chunk_s": best,
        "compile_s": compile_s,
        "group_size": plan.layout.group_size,
        "devices": plan.layout.n_devices,
    }


def torch_rate(p: int, d_model: int, steps: int, repeats: int) -> dict[str, Any] | None:
    """Steps/s of the PyTorch reference loop, the best over 1 thread and all cores; None
    (with a message) when torch is not installed."""
    try:
        from phasespace.bench import torch_reference
    except ImportError:
        print("PyTorch is not installed: the PyTorch baseline is skipped (pip install torch)", flush=True)
        return None
    import torch

    cores = len(os.sched_getaffinity(0))
    by_threads = {
        n: torch_reference.train_steps_per_second(p, d_model, steps, repeats, threads=n)
        for n in sorted({1, cores})
    }
    threads = max(by_threads, key=by_threads.get)
    last_only = torch_reference.train_steps_per_second(
        p, d_model, steps, repeats, last_only=True, threads=threads
    )
    return {
        "rate": by_threads[threads],
        "threads": threads,
        "by_threads": by_threads,
        "last_only": last_only,
        "version": torch.__version__,
    }


def _steps_for(n_networks: int, base: int) -> int:
    """Steps per timed chunk: ~``base`` network-steps per chunk, at least 4 steps."""
    return max(4, base // n_networks)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement; returns the results dict (also printed as it goes)."""
    import jax

    from phasespace.bench.peak import measure_matmul_flops
    from phasespace.models.transformer import TransformerArch
    from phasespace.population.flops import step_flops

    load0 = os.getloadavg()
    started = time.perf_counter()
    res: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_model(),
            "cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind,
        },
        "versions": {
            k: _version(k) for k in ("phasespace", "jax", "jaxlib", "flax", "optax", "numpy", "torch")
        },
        "python": platform.python_version(),
        "command": " ".join(["python benchmarks/bench.py", *args.argv]),
        "p": args.p,
        "load_average_start": load0,
    }
    peak = measure_matmul_flops(n=args.matmul_n)
    res["matmul_flops"] = peak
    n_dev = len(jax.local_devices())
    print(f"measured float32 matmul: {peak / 1e9:.1f} GFLOP/s ({n_dev} device(s))", flush=True)
    rows = []
    for d in args.widths:
        arch = TransformerArch(p=args.p, d_model=d)
        flops_fast = step_flops(arch, fast=True)
        flops_plain = step_flops(arch, fast=False)
        t = torch_rate(args.p, d, max(2, args.torch_steps * 32 // d), args.repeats) if args.torch else None
        if t is not None:
            print(f"d_model={d}: PyTorch loop {t['rate']:.1f} steps/s ({t['threads']} thread(s))", flush=True)
        one = engine_rate(args.p, d, 1, True, _steps_for(1, args.chunk), args.repeats)
        print(f"d_model={d}: engine, one at a time: {one['rate']:.1f} network-steps/s", flush=True)
        for r in args.populations:
            fast = one if r == 1 else engine_rate(args.p, d, r, True, _steps_for(r, args.chunk), args.repeats)
            plain = None
            if r in args.plain_populations:  # slower: shorter chunks, one timed chunk fewer
                steps = _steps_for(r, args.chunk // 4)
                plain = engine_rate(args.p, d, r, False, steps, max(1, args.repeats - 1))
            row = {
                "d_model": d,
                "R": r,
                "fast": fast,
                "plain": plain,
                "one_at_a_time": one["rate"],
                "torch": t,
                "flops_fast": flops_fast,
                "flops_plain": flops_plain,
            }
            rows.append(row)
            print(_row_line(row, peak), flush=True)
    res["rows"] = rows
    res["load_average_end"] = os.getloadavg()
    res["seconds"] = time.perf_counter() - started
    return res


def _row_line(row: dict[str, Any], peak: float) -> str:
    f = row["fast"]
    s = f"d_model={row['d_model']} R={row['R']}: engine {f['rate']:.1f} network-steps/s"
    s += f" ({f['rate'] * row['flops_fast'] / peak:.0%} of matmul peak), compile {f['compile_s']:.1f} s"
    if row["plain"]:
        s += f"; plain {row['plain']['rate']:.1f}"
    if row["torch"]:
        s += f"; ×{f['rate'] / row['torch']['rate']:.1f} the PyTorch loop"
    return s


def markdown(res: dict[str, Any]) -> str:
    """The results as a markdown section (appended to RESULTS.md)."""
    m, v = res["machine"], res["versions"]
    peak = res["matmul_flops"]
    lines = [
        f"## {res['date']} — {m['cpu']}, {m['cores']} cores ({m['backend']})",
        "",
        f"Command: `{res['command']}` ({res['seconds']:.0f} s). "
        f"jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, optax {v['optax']}, "
        f"numpy {v['numpy']}, torch {v['torch'] or 'not installed'}, Python {res['python']}; "
        f"{len(m['devices'])} JAX device(s). Load average at start {res['load_average_start'][0]:.2f}, "
        f"at end {res['load_average_end'][0]:.2f} (a value above ~0.5 means other work shared the cores).",
        "",
        f"Measured float32 matmul peak: **{peak / 1e9:.1f} GFLOP/s**. p = {res['p']}. Rates are "
        "network-steps/s (one optimizer step of one network over all p² pairs), best of the timed "
        "chunks. FLOP/s are analytic counts per network-step (phasespace/population/flops.py) × rate; "
        "'plain-equivalent' counts the plain model's arithmetic for the same steps.",
        "",
        "| d_model | R | engine (fast) | % of peak | plain-equiv. GFLOP/s | engine (plain) | % of peak "
        "| one at a time | PyTorch loop | fast ÷ PyTorch | compile s | G × devices |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        f, pl, t = row["fast"], row["plain"], row["torch"]
        cells = [
            str(row["d_model"]),
            str(row["R"]),
            f"{f['rate']:.1f}",
            f"{f['rate'] * row['flops_fast'] / peak:.0%}",
            f"{f['rate'] * row['flops_plain'] / 1e9:.0f}",
            f"{pl['rate']:.1f}" if pl else "–",
            f"{pl['rate'] * row['flops_plain'] / peak:.0%}" if pl else "–",
            f"{row['one_at_a_time']:.1f}",
            f"{t['rate']:.1f}" if t else "skipped",
            f"{f['rate'] / t['rate']:.1f}×" if t else "–",
            f"{f['compile_s']:.1f}",
            f"{f['group_size']} × {f['devices']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    torch_rows = {r["d_model"]: r["torch"] for r in res["rows"] if r["torch"]}
    if torch_rows:
        detail = "; ".join(
            f"d_model={d}: "
            + ", ".join(f"{n} thread(s) {x:.1f}" for n, x in t["by_threads"].items())
            + f", MLP at the last position only {t['last_only']:.1f}"
            for d, t in torch_rows.items()
        )
        lines += ["", f"PyTorch loop (steps/s): {detail}. The table uses its best thread count."]
    return "\n".join(lines) + "\n"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--p", type=int, default=59, help="modulus (default 59)")
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 128], help="d_model values")
    ap.add_argument("--populations", type=int, nargs="+", default=[1, 16, 64, 256], help="population sizes R")
    ap.add_argument(
        "--plain-populations",
        type=int,
        nargs="*",
        default=[1, 64],
        help="R also measured with the plain model",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed chunks per measurement (best is kept)")
    ap.add_argument("--chunk", type=int, default=256, help="network-steps per timed chunk (≥ 4 steps)")
    ap.add_argument("--torch-steps", type=int, default=24, help="PyTorch steps per timing at d_model 32")
    ap.add_argument("--no-torch", dest="torch", action="store_false", help="skip the PyTorch baseline")
    ap.add_argument("--matmul-n", type=int, default=2048, help="matrix size of the matmul peak measurement")
    ap.add_argument("--cpu-devices", type=int, help="CPU devices (default: one per core)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument("--out", default=DEFAULT_RESULTS, help="markdown file the results are appended to")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument(
        "--append",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="append the results to --out (default: yes, except with --quick, a smoke test whose numbers "
        "are not worth recording)",
    )
    args = ap.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.append is None:
        args.append = not args.quick
    if args.quick:
        args.p, args.widths, args.populations, args.plain_populations = 23, [16], [1, 4], [4]
        args.repeats, args.chunk, args.torch_steps, args.matmul_n = 2, 16, 4, 256
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``benchmarks/bench.py`` and ``phasespace bench``."""
    args = parse(argv)
    from phasespace.training import placement

    placement.use_cpu_devices(args.cpu_devices)
    res = run(args)
    md = markdown(res)
    print("\n" + md)
    if args.append:
        from phasespace.io import store

        old = ""
        if os.path.exists(args.out):
            with open(args.out) as f:
                old = f.read()
        header = "# Benchmark results\n\nAppended by `python benchmarks/bench.py`, newest last.\n\n"
        header = "" if old else header
        store.write_text(args.out, old + header + ("\n" if old else "") + md)
        print(f"appended to {args.out}")
    if args.json:
        from phasespace.io import store

        store.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
