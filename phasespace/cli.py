"""Command line: ``phasespace run | reference | analyze | compare | bench``."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

import numpy as np


def _start_devices(args: argparse.Namespace) -> None:
    """Multi-process start-up and CPU devices, before JAX initialises its backends."""
    from phasespace.training import placement

    distributed = placement.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if not distributed:
        placement.use_cpu_devices(args.cpu_devices)


def _cmd_run(args: argparse.Namespace) -> int:
    from phasespace.spec.parse import load_spec

    spec = load_spec(args.spec)  # validated before any compute
    _start_devices(args)
    from phasespace.sweep.run import default_out_dir, run_sweep

    out = args.out or default_out_dir(spec)
    result = run_sweep(spec, out, spec_path=args.spec, progress=not args.quiet)
    if result is None:
        return 0
    runs = result.runs
    env = (result.environment.get("segments") or [result.environment])[-1]  # this run's record
    rate = env.get("network_steps_per_second")
    print(
        f"\n{len(runs['index'])} networks, {env['wall_seconds']:.1f} s, "
        + (f"{rate:.0f} network-steps/s" if rate else "nothing left to train")
        + (" (resumed)" if env.get("resumed") else "")
        + f" -> {out}"
    )
    frozen = int(np.sum(runs["nonfinite_step"] >= 0))
    degenerate = int(np.sum(runs["degenerate"] != "")) if runs["degenerate"].dtype.kind == "U" else 0
    if frozen or degenerate:
        print(
            f"{frozen} networks frozen after a non-finite loss/update (column nonfinite_step), "
            f"{degenerate} with NaN metrics (column degenerate); means below skip NaN"
        )
    alpha = runs["attention_rate"]
    print(
        f"{'attention rate':>14} {'n':>3} {'test acc':>9} {'grad sym':>9} {'dist irr':>9} "
        f"{'d.i. (lw)':>9} {'circular':>8}"
    )
    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)  # all-NaN groups print nan
    for a in np.unique(alpha):
        sel = alpha == a
        print(
            f"{a:14.3f} {sel.sum():3d} {np.nanmean(runs['test_accuracy'][sel]):9.4f} "
            f"{np.nanmean(runs['gradient_symmetricity'][sel]):9.4f} "
            f"{np.nanmean(runs['distance_irrelevance'][sel]):9.4f} "
            f"{np.nanmean(runs['distance_irrelevance_largest_wrong'][sel]):9.4f} "
            f"{np.mean(runs['circular'][sel]):8.2f}"
        )
    _print_phase(result)
    return 0


def _print_phase(result) -> None:
    from phasespace.phase.diagram import format_transitions

    pad = result.environment.get("padding")
    if pad:
        widths = ", ".join(
            f"D={b['d_model']} ({b['networks']} networks, d {b['true_widths'][0]}–{b['true_widths'][1]}, "
            f"waste {100 * b['waste']:.1f}%)"
            for b in pad["buckets"]
        )
        print(f"\nwidth buckets: {widths}\npadding waste: {100 * pad['waste']:.1f}% of matmul FLOPs")
    if "dims__transition" in result.phase:
        print()
        print(format_transitions(result.phase))


def _cmd_compare(args: argparse.Namespace) -> int:
    import os

    from phasespace.io import store
    from phasespace.phase import compare

    tables = args.table or [
        os.path.join(args.reference_dir, "1l_fixedwidth.csv"),
        os.path.join(args.reference_dir, "1l_varywidth.csv"),
    ]
    filters = {
        "n_layers": args.n_layers,
        "act": None if args.act == "any" else args.act,
        "diff_vocab": args.diff_vocab,
        "eqn_sign": args.eqn_sign,
    }
    options = {
        "circular_threshold": args.circular_threshold,
        "symmetric_threshold": args.symmetric_threshold,
        "irrelevance_threshold": args.irrelevance_threshold,
    }
    if args.alpha_bins is not None:
        options["alpha_bins"] = args.alpha_bins
    if args.width_edges:
        options["width_bins"] = [float(x) for x in args.width_edges.split(",")]
    a = compare.load_table(args.sweep)
    for i, t in enumerate(tables):
        b = compare.load_table(t)
        c = compare.compare(a, b, (args.sweep, t), options, filters)
        if i:
            print("\n" + "=" * 100 + "\n")
        print(compare.format_comparison(c))
        if args.out:
            stem = os.path.splitext(os.path.basename(t.rstrip("/")))[0]
            rows = compare.comparison_rows(c)
            if rows:
                store.write_csv(os.path.join(args.out, f"alpha_star_vs_{stem}.csv"), list(rows[0]), rows)
            store.write_npz(
                os.path.join(args.out, f"compare_{stem}.npz"),
                {
                    **{f"A__{k}": v for k, v in c.arrays[0].items()},
                    **{f"B__{k}": v for k, v in c.arrays[1].items()},
                    **{f"diff__{k}": v for k, v in c.diff.items()},
                },
            )
            if args.figures:
                from phasespace.phase import figures

                for side, rows_, arrays in (("A", a, c.arrays[0]), ("B", b, c.arrays[1])):
                    sel, _ = compare.select(rows_, **filters)
                    name = os.path.basename(os.path.normpath(c.names[0 if side == "A" else 1]))
                    figures.phase_figures(
                        sel, arrays, os.path.join(args.out, f"figures_{stem}_{side}"), options, title=name
                    )
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    from phasespace.sweep.reference import evaluate_reference_dir

    rows = evaluate_reference_dir(args.dir, out_csv=args.out)
    cols = [
        "run",
        "attention_rate",
        "n_layers",
        "d_model",
        "accuracy",
        "gradient_symmetricity",
        "distance_irrelevance",
        "distance_irrelevance_largest_wrong",
        "circularity",
        "param_norm",
    ]
    print(" ".join(f"{c[:12]:>12}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>12.5g}" if isinstance(r[c], float) else f"{r[c]!s:>12}" for c in cols))
    return 0


def _device_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("devices and hosts")
    g.add_argument(
        "--coordinator",
        help="host:port of process 0 for a multi-host run (jax.distributed; env PHASESPACE_COORDINATOR)",
    )
    g.add_argument(
        "--num-processes", type=int, help="processes in a multi-host run (env PHASESPACE_NUM_PROCESSES)"
    )
    g.add_argument("--process-id", type=int, help="this process's index (env PHASESPACE_PROCESS_ID)")
    g.add_argument(
        "--cpu-devices",
        type=int,
        help="CPU devices to shard the networks over when no accelerator is used (default: one per core)",
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from phasespace.bench.bench import main as bench_main

    return bench_main(args.args)


def _cmd_analyze(args: argparse.Namespace) -> int:
    import os

    from phasespace.sweep.reanalyze import analyze_sweep, is_reference_folder, write_reference_analysis

    if is_reference_folder(args.dir):
        out = args.out or os.path.join("runs", "reference")
        rows = write_reference_analysis(args.dir, out)
        key = "run"
    else:
        if args.out:
            print("phasespace: error: --out applies to reference folders only", file=sys.stderr)
            return 2
        rows = analyze_sweep(args.dir)
        out, key = args.dir, "index"
    cols = [
        key,
        "model",
        "accuracy",
        "gradient_symmetricity",
        "distance_irrelevance",
        "circularity",
        "n_circles",
        "circles_accuracy",
        "algorithm",
    ]
    print(" ".join(f"{c[:12]:>12}" for c in cols) + "  circles k (δ)")
    for r in rows:
        ks = [(r.get(f"circle{i}_k", np.nan), r.get(f"circle{i}_delta", np.nan)) for i in range(1, 13)]
        circ = ", ".join(f"{int(k)} ({int(d)})" for k, d in ks if np.isfinite(k) and k > 0)
        vals = [r.get(c, "") for c in cols]
        print(
            " ".join(f"{v:>12.5g}" if isinstance(v, (float, np.floating)) else f"{v!s:>12}" for v in vals)
            + f"  {circ}"
        )
    print(f"-> {os.path.join(out, 'runs.csv')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``phasespace`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["bench"]:  # every option after it is benchmarks/bench.py's
        from phasespace.bench.bench import main as bench_main

        return bench_main(args_list[1:])
    parser = argparse.ArgumentParser(prog="phasespace", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a sweep and write its directory")
    run.add_argument("spec", help="sweep spec (TOML), e.g. sweeps/quick.toml")
    run.add_argument("--out", help="sweep directory (default runs/<name>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    _device_options(run)
    run.set_defaults(fn=_cmd_run)
    bench = sub.add_parser("bench", help="measure throughput (same as python benchmarks/bench.py)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="options of benchmarks/bench.py (see --help)")
    bench.set_defaults(fn=_cmd_bench)
    ref = sub.add_parser("reference", help="evaluate the paper's released transformer checkpoints")
    ref.add_argument("dir", nargs="?", default="../shared/reference", help="folder of <runid>.npz/.json")
    ref.add_argument("--out", help="write the table as CSV here")
    ref.set_defaults(fn=_cmd_reference)
    ana = sub.add_parser(
        "analyze",
        help="recompute every metric of a finished sweep (in place) or of a folder of reference checkpoints",
    )
    ana.add_argument("dir", help="a sweep directory, or a folder of <runid>.npz/.json checkpoints")
    ana.add_argument("--out", help="for a checkpoint folder: output directory (default runs/reference)")
    ana.set_defaults(fn=_cmd_analyze)
    cmp = sub.add_parser(
        "compare",
        help="compare a sweep (or a table) with the published sweep tables: binned statistics and α*",
    )
    cmp.add_argument("sweep", help="sweep directory, its runs.csv, or any table with the same columns")
    cmp.add_argument(
        "--table",
        action="append",
        help="table to compare with (repeatable; default: the two published tables in --reference-dir)",
    )
    cmp.add_argument("--reference-dir", default="../shared/reference", help="folder of the published tables")
    cmp.add_argument("--n-layers", type=int, default=1, help="keep this depth (default 1)")
    cmp.add_argument(
        "--act", default="relu", choices=["relu", "gelu", "any"], help="activation (default relu)"
    )
    cmp.add_argument(
        "--diff-vocab", action="store_true", help="separate operand vocabulary instead of standard"
    )
    cmp.add_argument("--eqn-sign", action="store_true", help="equals-token variant instead of standard")
    cmp.add_argument("--alpha-bins", type=int, help="equal attention-rate bins on [0, 1] (default 10)")
    cmp.add_argument("--width-edges", help="comma-separated d_model bin edges (default: shared octaves)")
    cmp.add_argument("--circular-threshold", type=float, default=0.995)
    cmp.add_argument("--symmetric-threshold", type=float, default=0.98)
    cmp.add_argument("--irrelevance-threshold", type=float, default=0.6)
    cmp.add_argument("--out", help="folder for alpha_star_vs_<table>.csv and compare_<table>.npz")
    cmp.add_argument("--figures", action="store_true", help="also draw both sides' phase figures into --out")
    cmp.set_defaults(fn=_cmd_compare)
    args = parser.parse_args(argv)
    from phasespace.spec.parse import SpecError

    def show(message, category, *_args, **_kwargs) -> None:
        print(f"phasespace: warning ({category.__name__}): {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            return args.fn(args)
        except (SpecError, OSError, ValueError) as e:
            print(f"phasespace: error: {e}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
