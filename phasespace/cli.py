"""Command line: ``phasespace run | merge | reference | analyze | compare | show | report | bench``."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from phasespace.defaults import THRESHOLDS


def _start_devices(args: argparse.Namespace) -> None:
    """Multi-process start-up and CPU devices, before JAX initialises its backends."""
    from phasespace.training import placement

    distributed = placement.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if not distributed:
        placement.use_cpu_devices(args.cpu_devices)


def _cmd_run(args: argparse.Namespace) -> int:
    from phasespace.spec.parse import load_spec

    spec = load_spec(args.spec)  # validated before any compute
    networks = out = None
    if args.shard is not None:  # one part of the sweep (phasespace.sweep.shard), checked before any compute
        from phasespace.sweep.shard import default_shard_dir, parse_shard, shard_spec

        shard = parse_shard(args.shard)
        out = args.out or default_shard_dir(spec, shard)
        spec, networks = shard_spec(spec, shard)
    _start_devices(args)
    from phasespace.sweep.run import default_out_dir, run_sweep

    out = args.out or out or default_out_dir(spec)
    result = run_sweep(spec, out, spec_path=args.spec, progress=not args.quiet, networks=networks)
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
    print(summary_table(runs))
    _print_phase(result)
    return 0


def summary_table(runs: dict[str, np.ndarray]) -> str:
    """The table ``phasespace run`` prints: per attention rate, the number of networks, the means
    of test accuracy and the circuit metrics, the fraction that is circular, and how many
    networks learned each algorithm (the runs table's ``algorithm`` column); one table per
    operation when the sweep has several (operations are never pooled)."""
    ops = np.asarray(runs["operation"]) if "operation" in runs else None
    if ops is None or len(set(ops)) <= 1:
        return _summary_block(runs)
    blocks = []
    for op in dict.fromkeys(ops):
        sel = ops == op
        blocks.append(f"operation {op}:\n" + _summary_block({k: np.asarray(v)[sel] for k, v in runs.items()}))
    return "\n".join(blocks)


def _summary_block(runs: dict[str, np.ndarray]) -> str:
    alpha = runs["attention_rate"]
    algorithms = [
        a
        for a in ("clock", "pizza", "non-circular", "mixed", "collapsed", "diverged", "not-addition")
        if a in set(runs["algorithm"])
    ]
    cols = [
        ("networks", 8),
        ("test accuracy", 13),
        ("gradient symmetricity", 21),
        ("distance irrelevance", 20),
        ("distance irrelevance (largest wrong)", 36),
        ("circular fraction", 17),
    ]
    lines = [
        "per attention rate: means over its networks (NaN metrics skipped) and the count of each algorithm",
        f"{'attention rate':>14} "
        + " ".join(f"{c:>{w}}" for c, w in cols)
        + "".join(f" {a.title() if a in ('clock', 'pizza') else a:>12}" for a in algorithms),
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)  # all-NaN groups: nan
        for a in np.unique(alpha):  # NaN once: the networks of families without attention
            sel = np.isnan(alpha) if np.isnan(a) else alpha == a
            name = f"{a:14.3f}" if np.isfinite(a) else f"{'none':>14}"
            values = [
                f"{int(sel.sum()):>8d}",
                f"{np.nanmean(runs['test_accuracy'][sel]):13.4f}",
                f"{np.nanmean(runs['gradient_symmetricity'][sel]):21.4f}",
                f"{np.nanmean(runs['distance_irrelevance'][sel]):20.4f}",
                f"{np.nanmean(runs['distance_irrelevance_largest_wrong'][sel]):36.4f}",
                f"{np.mean(runs['circular'][sel]):17.2f}",
            ]
            counts = "".join(f" {int(np.sum(runs['algorithm'][sel] == k)):>12d}" for k in algorithms)
            lines.append(f"{name} " + " ".join(values) + counts)
    return "\n".join(lines)


def _cmd_merge(args: argparse.Namespace) -> int:
    from phasespace.sweep.shard import merge_shards

    result = merge_shards(args.dirs, args.out, allow_partial=args.allow_partial)
    missing = result.environment.get("missing_networks") or []
    print(
        f"{len(result.runs['index'])} networks from {len(args.dirs)} shards -> {args.out}"
        + (f" (partial: {len(missing)} networks missing, listed in merge.json)" if missing else "")
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

    tables = args.table or compare.published_tables(args.reference_dir)
    filters = {
        "n_layers": args.n_layers,
        "act": None if args.act == "any" else args.act,
        "diff_vocab": args.diff_vocab,
        "eqn_sign": args.eqn_sign,
    }
    thresholds = {
        "circular_threshold": args.circular_threshold,
        "gradient_symmetricity_threshold": args.gradient_symmetricity_threshold,
        "distance_irrelevance_threshold": args.distance_irrelevance_threshold,
    }
    options = {}
    if args.alpha_bins is not None:
        options["alpha_bins"] = args.alpha_bins
    if args.width_edges:
        options["width_bins"] = [float(x) for x in args.width_edges.split(",")]
    a = compare.load_table(args.sweep)
    for i, t in enumerate(tables):
        b = compare.load_table(t)
        c = compare.compare(a, b, (args.sweep, t), options, filters, thresholds)
        if i:
            print("\n" + "=" * 100 + "\n")
        print(compare.format_comparison(c))
        if args.out:
            stem = os.path.splitext(os.path.basename(t.rstrip("/")).removesuffix(".gz"))[0]
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
                        sel, arrays, os.path.join(args.out, f"figures_{stem}_{side}"), thresholds, title=name
                    )
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    from phasespace.io.reference import find_reference_dir
    from phasespace.sweep.reanalyze import reference_table

    rows = reference_table(args.dir or find_reference_dir(), out_csv=args.out)
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
    print_rows(rows, cols)
    return 0


def print_rows(rows: list[dict], cols: list[str], extra: tuple[str, list[str]] | None = None) -> None:
    """Print ``rows`` as a table of ``cols`` with full column names (each column as wide as its
    name, at least 12 characters; floats to 5 significant digits); ``extra`` = (title, one
    string per row) adds a last, left-aligned column."""
    widths = [max(12, len(c)) for c in cols]
    head = " ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))
    print(head + (f"  {extra[0]}" if extra else ""))
    for i, r in enumerate(rows):
        cells = (
            f"{v:>{w}.5g}" if isinstance(v, (float, np.floating)) else f"{v!s:>{w}}"
            for v, w in ((r.get(c, ""), w) for c, w in zip(cols, widths, strict=True))
        )
        print(" ".join(cells) + (f"  {extra[1][i]}" if extra else ""))


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

    from phasespace.io.reference import find_reference_dir
    from phasespace.sweep.reanalyze import analyze_sweep, is_reference_folder, write_reference_analysis

    args.dir = args.dir or find_reference_dir()
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
    circles = []
    for r in rows:
        ks = [(r.get(f"circle{i}_k", np.nan), r.get(f"circle{i}_delta", np.nan)) for i in range(1, 13)]
        circles.append(", ".join(f"{int(k)} ({int(d)})" for k, d in ks if np.isfinite(k) and k > 0))
    print_rows(rows, cols, ("circles k (δ)", circles))
    print(f"-> {os.path.join(out, 'runs.csv')}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from phasespace.report import card

    out = args.out or card.default_out_dir(args.dir)
    c = card.compute_card(card.load_network(args.dir, args.run))
    paths = card.write_card(c, out)
    circles = ", ".join(
        f"k={x['k']} (δ {x['delta']}; FVE clock {100 * x['fve_clock']:.1f}%, "
        f"pizza {100 * x['fve_pizza']:.1f}%"
        + (
            f", accompanying k={x['accompanies']} {100 * x['fve_accompanying']:.1f}%"
            if x["accompanies"]
            else ""
        )
        + ")"
        for x in c.circles()
    )
    print(card.header(c))
    print(f"circles: {circles or 'none'}")
    for p in paths.values():
        print(f"-> {p}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from phasespace.report import page

    path = page.write_report(args.dir, draw_cards=not args.no_cards, rebuild_cards=args.rebuild_cards)
    print(f"-> {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``phasespace`` command line: one subcommand per job, each calling its ``_cmd_*``."""
    parser = argparse.ArgumentParser(prog="phasespace", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_analysis_commands(sub)
    _add_compare_command(sub)
    for name in IMPORTING_COMMANDS:
        sub.choices[name].add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            metavar="MODULE",
            help="import MODULE first (repeatable), e.g. one that calls phasespace.register_operation",
        )
    return parser


IMPORTING_COMMANDS = ("run", "merge", "analyze", "show", "report")
"""Subcommands that read a sweep spec, and so may need operations registered from Python
(``--import MODULE``, :func:`import_modules`)."""


def import_modules(names: Sequence[str]) -> None:
    """Import each module of ``names`` (``--import``; e.g. one registering an operation with
    :func:`phasespace.register_operation`), the current directory first on the module path.

    Raises:
        ValueError: naming the module, if it cannot be imported.
    """
    import importlib
    import os

    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # the module's own error, reported as one line
            raise ValueError(f"--import {name}: {type(e).__name__}: {e}") from e


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="train a sweep and write its directory")
    run.add_argument("spec", help="sweep spec (TOML), e.g. sweeps/quick.toml")
    run.add_argument("--out", help="sweep directory (default runs/<name>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--shard",
        metavar="I/N|auto",
        help="train only shard I of N (0 ≤ I < N; FLOP-balanced, deterministic from the spec; default "
        "--out runs/<name>/shard_I); 'auto': from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT",
    )
    _device_options(run)
    run.set_defaults(fn=_cmd_run)
    merge = sub.add_parser("merge", help="merge the shard directories of one sweep into one sweep directory")
    merge.add_argument("dirs", nargs="+", metavar="DIR", help="shard directories (phasespace run --shard)")
    merge.add_argument("--out", required=True, help="the merged sweep directory")
    merge.add_argument(
        "--allow-partial",
        action="store_true",
        help="merge even if networks are missing (their indices are recorded in merge.json)",
    )
    merge.set_defaults(fn=_cmd_merge)


def _add_analysis_commands(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure throughput (same as python benchmarks/bench.py; every option after it is bench's)",
        add_help=False,
    )
    bench.set_defaults(fn=_cmd_bench)
    ref = sub.add_parser("reference", help="evaluate the paper's released transformer checkpoints")
    ref.add_argument(
        "dir", nargs="?", help="folder of <runid>.npz/.json (default: the repository's data/reference)"
    )
    ref.add_argument("--out", help="write the table as CSV here")
    ref.set_defaults(fn=_cmd_reference)
    ana = sub.add_parser(
        "analyze",
        help="recompute every metric of a finished sweep (in place) or of a folder of reference checkpoints",
    )
    ana.add_argument(
        "dir",
        nargs="?",
        help="a sweep directory, or a folder of <runid>.npz/.json checkpoints (default: data/reference)",
    )
    ana.add_argument("--out", help="for a checkpoint folder: output directory (default runs/reference)")
    ana.set_defaults(fn=_cmd_analyze)
    show = sub.add_parser(
        "show", help="draw one network's card: embedding circles, logit patterns, logit fits, curves"
    )
    show.add_argument("dir", help="a sweep directory, or a folder of reference checkpoints (data/reference)")
    show.add_argument(
        "--run", required=True, help="the network: a row index of runs.csv, or a checkpoint's run id"
    )
    show.add_argument(
        "--out", help="folder for the PNGs (default DIR/cards; runs/reference/cards for checkpoints)"
    )
    show.set_defaults(fn=_cmd_show)
    rep = sub.add_parser("report", help="write DIR/report.html: spec, phase tables, figures, networks, cards")
    rep.add_argument("dir", help="a finished sweep directory")
    rep.add_argument(
        "--no-cards", action="store_true", help="draw no cards (cards already in DIR/cards are still linked)"
    )
    rep.add_argument(
        "--rebuild-cards", action="store_true", help="redraw every card, even those newer than runs.csv"
    )
    rep.set_defaults(fn=_cmd_report)


def _add_compare_command(sub: argparse._SubParsersAction) -> None:
    cmp = sub.add_parser(
        "compare",
        help="compare a sweep (or a table) with the published sweep tables: binned statistics and α*",
    )
    cmp.add_argument("sweep", help="sweep directory, its runs.csv, or any table with the same columns")
    cmp.add_argument(
        "--table",
        action="append",
        help="table to compare with (repeatable; default: the two published tables)",
    )
    cmp.add_argument(
        "--reference-dir", help="folder of the published tables (default: the copies shipped with phasespace)"
    )
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
    for name, default in THRESHOLDS.items():
        cmp.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=default, help=f"default {default}"
        )
    cmp.add_argument("--out", help="folder for alpha_star_vs_<table>.csv and compare_<table>.npz")
    cmp.add_argument("--figures", action="store_true", help="also draw both sides' phase figures into --out")
    cmp.set_defaults(fn=_cmd_compare)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``phasespace`` console script: parse, run the subcommand, print errors
    as one line (exit code 2) and warnings as ``phasespace: warning (...)`` lines."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.args = extra  # every option after "bench" is benchmarks/bench.py's (its --help too)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from phasespace.spec.parse import SpecError

    def show(message, category, *_args, **_kwargs) -> None:
        print(f"phasespace: warning ({category.__name__}): {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            import_modules(getattr(args, "imports", []))
            return args.fn(args)
        except (SpecError, OSError, ValueError) as e:
            print(f"phasespace: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(
                "phasespace: interrupted; the same command resumes from the last checkpoint",
                file=sys.stderr,
            )
            return 130


if __name__ == "__main__":
    sys.exit(main())
