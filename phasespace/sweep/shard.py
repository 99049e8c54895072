"""Shards: one sweep split across machines (job arrays), and merged back into one sweep directory.

``phasespace run SPEC --shard I/N --out DIR_I`` trains the I-th of N disjoint parts of the sweep's
expanded network list (:func:`assign_shards`: balanced by the FLOP model, deterministic from the
spec alone, so the same network goes to the same shard on every machine). A shard is the spec plus
a selection of network indices, applied after :func:`~phasespace.spec.expand.expand` and before
the width buckets are planned (so buckets are per shard). Its directory is a complete, resumable
sweep directory of its own: its ``spec.json`` holds the resolved spec and a ``shard`` record (I, N,
the selected network indices, the sweep's fingerprint), and its ``runs.csv`` rows keep each
network's global ``index``. ``--shard auto`` reads SLURM's job-array variables (:func:`slurm_shard`).

``phasespace merge DIR_0 … DIR_{N−1} --out DIR`` (:func:`merge_shards`) checks that the shards come
from the same spec and cover it exactly once, then writes one sweep directory whose derived files
are those of the whole sweep: every finished bucket's recorded rows and history
(``checkpoints/<bucket>/result.json``) go, in global index order, through the one writer of
derived files; the final parameters (``params/``) are merged so that ``phasespace analyze DIR``
works on the result. A partial merge is refused unless ``allow_partial``, which records the
missing network indices in ``merge.json`` and ``environment.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phasespace.io import store
from phasespace.io.checkpoint import BucketCheckpoint, check_sweep_dir, resume_fields, sweep_lock
from phasespace.io.params import PARAMS_DIR, list_bucket_params, load_bucket_params, save_bucket_params
from phasespace.models.registry import arch_to_dict, family, make_arch
from phasespace.population.buckets import plan_buckets
from phasespace.population.flops import step_flops
from phasespace.spec.expand import expand
from phasespace.spec.networks import Network
from phasespace.spec.parse import SweepSpec, spec_from_dict
from phasespace.sweep.derived import load_metrics_history, runs_columns, write_results

SHARD_KEY = "shard"
"""Key of the shard record in a shard directory's ``spec.json``."""
MERGE_FILE = "merge.json"
"""The record of a merge (its sources, and the network indices missing from a partial merge)."""
EXECUTION_FIELDS = ("train.group_size", "train.memory_limit")
"""Fields of :func:`~phasespace.io.checkpoint.resume_fields` that only say how a machine executes
the sweep: shards of one sweep may differ in them (each machine its own memory)."""
BALANCE = "greedy-flops-1"
"""Name of the assignment rule of :func:`assign_shards` (recorded; a change of rule is a change of
shard, so a resume under another rule is refused)."""


class ShardError(ValueError):
    """A bad ``--shard`` value, or shards that cannot be merged (one-line message)."""


# --------------------------------------------------------------------------------------------- #
# Which shard


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 ≤ index < count)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> Shard:
    """``"I/N"`` (integers, 0 ≤ I < N), or ``"auto"`` (:func:`slurm_shard` of ``environ``,
    default ``os.environ``).

    Raises:
        ShardError: a one-line message naming the value and what is allowed.
    """
    text = str(text).strip()
    if text == "auto":
        return slurm_shard(os.environ if environ is None else environ)
    parts = text.split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        i, n = (int(x.strip()) for x in parts)
    except ValueError:
        raise ShardError(
            f"--shard {text!r}: expected I/N (shard I of N, integers, 0 ≤ I < N, e.g. 0/4) or 'auto'"
        ) from None
    if n < 1:
        raise ShardError(f"--shard {text!r}: the number of shards N={n} must be ≥ 1")
    if not 0 <= i < n:
        raise ShardError(f"--shard {text!r}: the shard index I={i} must be in 0 … {n - 1} (N={n})")
    return Shard(i, n)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    v = environ.get(name)
    if v is None or v.strip() == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ShardError(f"--shard auto: {name}={v!r} is not an integer") from None


def slurm_shard(environ: Mapping[str, str]) -> Shard:
    """The shard of a SLURM job-array task: I = (``SLURM_ARRAY_TASK_ID`` − ``SLURM_ARRAY_TASK_MIN``)
    / ``SLURM_ARRAY_TASK_STEP`` (MIN 0 and STEP 1 when unset) and N = ``SLURM_ARRAY_TASK_COUNT``,
    or ``SLURM_ARRAY_TASK_MAX`` − ``SLURM_ARRAY_TASK_MIN`` + 1 when COUNT is unset. The array
    must be a range (``--array=0-3``, ``1-8``, ``0-6:2``).

    Raises:
        ShardError: when the variables are absent, not integers, or give no valid I/N.
    """
    tid = _env_int(environ, "SLURM_ARRAY_TASK_ID")
    if tid is None:
        raise ShardError(
            "--shard auto: SLURM_ARRAY_TASK_ID is not set (not a SLURM job-array task: submit with "
            "sbatch --array=0-<N-1>, or give --shard I/N)"
        )
    count = _env_int(environ, "SLURM_ARRAY_TASK_COUNT")
    lo = _env_int(environ, "SLURM_ARRAY_TASK_MIN")
    hi = _env_int(environ, "SLURM_ARRAY_TASK_MAX")
    step = _env_int(environ, "SLURM_ARRAY_TASK_STEP") or 1
    if step < 1:
        raise ShardError(f"--shard auto: SLURM_ARRAY_TASK_STEP={step} must be ≥ 1")
    if count is None:
        if lo is None or hi is None:
            raise ShardError(
                "--shard auto: SLURM_ARRAY_TASK_COUNT is not set, nor SLURM_ARRAY_TASK_MIN and "
                "SLURM_ARRAY_TASK_MAX (needed for the number of shards); give --shard I/N"
            )
        count = (hi - lo) // step + 1
    offset = tid - (lo or 0)
    where = (
        f"SLURM_ARRAY_TASK_ID={tid}, SLURM_ARRAY_TASK_MIN={lo}, SLURM_ARRAY_TASK_STEP={step}, {count} tasks"
    )
    if count < 1:
        raise ShardError(f"--shard auto: {where}: no tasks in the array")
    if offset % step or not 0 <= offset // step < count:
        raise ShardError(
            f"--shard auto: {where}: the task is not one of a range of {count} "
            "(use a range, e.g. #SBATCH --array=0-3, or give --shard I/N)"
        )
    return Shard(offset // step, count)


# --------------------------------------------------------------------------------------------- #
# Balancing


def sweep_fingerprint(spec: SweepSpec) -> str:
    """The identity of a sweep for sharding: canonical JSON of its result-changing fields
    (:func:`~phasespace.io.checkpoint.resume_fields`, dotted names, without
    :data:`EXECUTION_FIELDS`). Shards merge only if their fingerprints are equal."""
    fields = {k: v for k, v in resume_fields(spec).items() if k not in EXECUTION_FIELDS}
    return json.dumps(fields, sort_keys=True)


def network_flops(spec: SweepSpec, net: Network) -> int:
    """The FLOPs of training one network: :func:`~phasespace.population.flops.step_flops` of its
    architecture at its true width (the computation its recipe uses) × its recipe's steps."""
    v = net.values
    arch = make_arch(
        v["model"],
        p=int(v["p"]),
        d_model=int(v["d_model"]),
        n_layers=int(v["n_layers"]),
        n_heads=int(v["n_heads"]),
        act=v["act"],
        diff_vocab=bool(v["diff_vocab"]),
        eqn_sign=bool(v["eqn_sign"]),
    )
    recipe = spec.recipe_for(family(arch))
    return int(step_flops(arch, recipe.fast)) * int(recipe.steps)


def assign_shards(spec: SweepSpec, networks: Sequence[Network], count: int) -> list[int]:
    """The shard of each network (list aligned with ``networks``): greedy largest first into
    ``count`` bins by :func:`network_flops` (ties by network index), each network into the bin
    with the fewest FLOPs so far (ties by the lower shard). Integer arithmetic only, so the
    assignment depends on the spec alone, never on the machine. Any two shards' FLOP totals
    differ by at most the largest single network's FLOPs.
    """
    if count < 1:
        raise ShardError(f"count={count}: the number of shards must be ≥ 1")
    costs = [network_flops(spec, n) for n in networks]
    order = sorted(range(len(networks)), key=lambda j: (-costs[j], networks[j].index))
    loads = [0] * count
    out = [0] * len(networks)
    for j in order:
        b = min(range(count), key=lambda k: (loads[k], k))
        out[j] = b
        loads[b] += costs[j]
    return out


# --------------------------------------------------------------------------------------------- #
# A shard's spec


@dataclasses.dataclass(frozen=True)
class ShardSpec(SweepSpec):
    """A sweep spec restricted to one shard: ``shard`` is the record written into ``spec.json``
    (``index``, ``count``, ``networks`` (the selected global indices, ascending),
    ``sweep_networks``, ``flops``, ``balance`` and ``fingerprint``, the whole sweep's
    :func:`sweep_fingerprint`). The record is part of :meth:`to_dict`, so resuming a shard
    directory with another shard, or with the whole sweep, is refused naming the field."""

    shard: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d[SHARD_KEY] = json.loads(json.dumps(dict(self.shard)))
        return d

    @property
    def sweep(self) -> SweepSpec:
        """The whole sweep's spec (without the shard)."""
        return SweepSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SweepSpec)})

    @property
    def label(self) -> str:
        return f"{self.shard['index']}/{self.shard['count']}"


def shard_spec(spec: SweepSpec, shard: Shard) -> tuple[ShardSpec, list[Network]]:
    """The spec of shard ``shard`` of ``spec`` and its networks (global indices, sweep order).

    Raises:
        ShardError: if the sweep has fewer networks than shards (a shard would be empty).
    """
    networks = expand(spec)
    if shard.count > len(networks):
        raise ShardError(
            f"--shard {shard}: the sweep has {len(networks)} networks, fewer than {shard.count} "
            f"shards; use N ≤ {len(networks)}"
        )
    owner = assign_shards(spec, networks, shard.count)
    mine = [n for n, o in zip(networks, owner, strict=True) if o == shard.index]
    record = {
        "index": shard.index,
        "count": shard.count,
        "networks": [n.index for n in mine],
        "sweep_networks": len(networks),
        "flops": sum(network_flops(spec, n) for n in mine),
        "balance": BALANCE,
        "fingerprint": sweep_fingerprint(spec),
    }
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(SweepSpec)}
    return ShardSpec(**fields, shard=record), mine


def default_shard_dir(spec: SweepSpec, shard: Shard) -> str:
    """``runs/<name>/shard_<I>``."""
    return os.path.join("runs", spec.name, f"shard_{shard.index}")


def read_stored_spec(sweep_dir: str) -> tuple[SweepSpec, Mapping[str, Any] | None]:
    """The spec stored in a sweep directory's ``spec.json`` and its shard record (None for a
    directory of a whole sweep); a shard's spec comes back as a :class:`ShardSpec`.

    Raises:
        ShardError: no readable ``spec.json``.
    """
    path = os.path.join(sweep_dir, "spec.json")
    try:
        stored = store.read_json_object(path)
    except (OSError, ValueError) as e:
        raise ShardError(f"{sweep_dir}: cannot read its spec ({e}); not a sweep directory") from None
    record = stored.pop(SHARD_KEY, None)
    spec = spec_from_dict(stored)
    if record is None:
        return spec, None
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(SweepSpec)}
    return ShardSpec(**fields, shard=record), record


# --------------------------------------------------------------------------------------------- #
# Merging


@dataclasses.dataclass
class _Part:
    """One shard directory given to :func:`merge_shards`."""

    path: str
    spec: ShardSpec
    rows: list[dict[str, Any]]
    histories: list[tuple[list[int], dict[str, Any]]]  # (global indices, history) per bucket
    unfinished: list[str]  # bucket keys without a recorded result

    @property
    def claimed(self) -> list[int]:
        return [int(i) for i in self.spec.shard["networks"]]

    @property
    def name(self) -> str:
        return f"{self.path} (shard {self.spec.label})"


def _indices(idx: Sequence[int], limit: int = 20) -> str:
    idx = sorted(idx)
    text = ", ".join(str(i) for i in idx[:limit])
    return text + (f", … ({len(idx) - limit} more)" if len(idx) > limit else "")


def _read_part(path: str) -> _Part:
    """A shard directory's finished buckets: their recorded rows and histories (read only)."""
    if not os.path.isdir(path):
        raise ShardError(f"merge: {path}: not a directory")
    spec, record = read_stored_spec(path)
    if record is None or not isinstance(spec, ShardSpec):
        raise ShardError(
            f"merge: {path}: not a shard directory (its spec.json records no shard; shards are "
            "written by phasespace run --shard I/N)"
        )
    sweep = spec.sweep
    if record.get("fingerprint") != sweep_fingerprint(sweep):
        raise ShardError(f"merge: {path}: the shard record of its spec.json does not match its spec")
    networks = expand(sweep)
    claimed = [int(i) for i in record["networks"]]
    if any(not 0 <= i < len(networks) for i in claimed):
        raise ShardError(f"merge: {path}: its shard record names networks outside the sweep")
    mine = [networks[i] for i in claimed]
    buckets = plan_buckets(mine, spec.buckets["max_buckets"], spec.buckets["max_waste"])
    every = int(spec.analysis.get("every", 0))
    part = _Part(path, spec, [], [], [])
    for b in buckets:
        ckpt = BucketCheckpoint(os.path.join(path, "checkpoints", b.key), b, spec)
        try:
            finished = ckpt.load_result()
        except ValueError as e:  # ResumeError: recorded with another spec or bucket plan
            raise ShardError(f"merge: {path}: {str(e).splitlines()[0]}") from None
        if finished is None:
            part.unfinished.append(b.key)
            continue
        rows, history = finished
        rows = [{k: np.asarray(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
        history = dict(history)
        if every > 0:
            steps = spec.recipe_for(family(b.arch)).steps
            history["metrics_history"] = load_metrics_history(ckpt.directory, steps)
        part.rows.extend(rows)
        part.histories.append(([n.index for n in b.networks], history))
    return part


def _check_same_sweep(parts: Sequence[_Part]) -> None:
    ref = parts[0]
    for p in parts[1:]:
        if p.spec.shard["fingerprint"] != ref.spec.shard["fingerprint"]:
            a = json.loads(ref.spec.shard["fingerprint"])
            b = json.loads(p.spec.shard["fingerprint"])
            diff = [
                f"{k}: {a.get(k, '(absent)')!r} ≠ {b.get(k, '(absent)')!r}"
                for k in sorted(set(a) | set(b))
                if a.get(k, "(absent)") != b.get(k, "(absent)")
            ]
            raise ShardError(
                f"merge: {p.name} is a shard of another spec than {ref.name}: "
                + "; ".join(diff[:5])
                + (f"; … ({len(diff) - 5} more)" if len(diff) > 5 else "")
            )


def _check_cover(parts: Sequence[_Part], n_networks: int, allow_partial: bool) -> list[int]:
    """Refuse networks claimed by two shards; return the missing ones (refused unless
    ``allow_partial``)."""
    owners: dict[int, list[_Part]] = {}
    for p in parts:
        for i in p.claimed:
            owners.setdefault(i, []).append(p)
    doubled = sorted(i for i, o in owners.items() if len(o) > 1)
    if doubled:
        dirs = {p.name: None for i in doubled for p in owners[i]}
        raise ShardError(
            f"merge: networks {_indices(doubled)} are in more than one of the given shards "
            f"({', '.join(dirs)}); give each shard once"
        )
    done = {int(r["index"]) for p in parts for r in p.rows}
    missing = sorted(set(range(n_networks)) - done)
    if not missing:
        return []
    reasons = []
    unclaimed = [i for i in missing if i not in owners]
    if unclaimed:
        counts = {int(p.spec.shard["count"]) for p in parts}
        if len(counts) == 1:
            n = counts.pop()
            given = {int(p.spec.shard["index"]) for p in parts}
            absent = [f"{k}/{n}" for k in range(n) if k not in given]
            reasons.append(f"shard{'s' if len(absent) > 1 else ''} {', '.join(absent)} not given")
        else:
            reasons.append(f"networks {_indices(unclaimed)} are in none of the given shards")
    for p in parts:
        if p.unfinished:
            reasons.append(f"{p.name} is unfinished (buckets {', '.join(p.unfinished)} not done)")
    message = (
        f"merge: {len(missing)} of {n_networks} networks missing (indices {_indices(missing)}): "
        + "; ".join(reasons)
    )
    if not allow_partial:
        raise ShardError(message + "; give every finished shard, or --allow-partial to merge what there is")
    return missing


def _merge_params(parts: Sequence[_Part], out_dir: str, keep: set[int]) -> list[str]:
    """``params/``: each bucket key's saved parameters from every shard, concatenated along the run
    axis in index order (a key whose architecture differs between shards is kept per shard)."""
    groups: dict[str, list[Any]] = {}
    for p in parts:
        for path in list_bucket_params(p.path):
            b = load_bucket_params(path)
            arch = json.dumps(arch_to_dict(b.arch), sort_keys=True)
            key = b.key
            if key in groups and groups[key][0][0] != arch:
                key = f"{b.key}__shard{p.spec.shard['index']}"
            groups.setdefault(key, []).append((arch, b))
    written = []
    for key, members in groups.items():
        index = np.concatenate([b.index for _, b in members])
        sel = np.asarray([int(i) in keep for i in index], bool)
        order = np.argsort(index[sel], kind="stable")
        if not order.size:
            continue

        def take(*leaves, sel=sel, order=order):
            return np.concatenate([np.asarray(x) for x in leaves])[sel][order]

        params = _tree_map(take, [b.params for _, b in members])
        hparams = {k: take(*[b.hparams[k] for _, b in members]) for k in members[0][1].hparams}
        written.append(
            save_bucket_params(out_dir, key, members[0][1].arch, index[sel][order], params, hparams)
        )
    for stale in set(list_bucket_params(out_dir)) - set(written):  # an earlier merge's
        os.remove(stale)
    return written


def _tree_map(fn, trees: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``fn`` over the leaves of nested dicts of equal structure (params as loaded back)."""
    out: dict[str, Any] = {}
    for k in trees[0]:
        sub = [t[k] for t in trees]
        out[k] = _tree_map(fn, sub) if isinstance(sub[0], Mapping) else fn(*sub)
    return out


def merge_shards(shard_dirs: Sequence[str], out_dir: str, allow_partial: bool = False) -> store.SweepResult:
    """Merge shard directories of one sweep into the sweep directory ``out_dir``.

    Checks, before writing anything: each directory is a shard (``spec.json`` with a shard
    record); all come from the same spec (same :func:`sweep_fingerprint`, naming the differing
    fields otherwise); no network is in two of them (naming the
    indices and directories); every network of the sweep has a finished result (naming the
    missing indices, the shards not given and the unfinished ones), unless ``allow_partial``.

    Then writes ``spec.json`` (the whole sweep's spec), ``spec.toml`` (the first shard's),
    ``params/`` (merged), ``merge.json`` and ``environment.json`` (the shards given, their
    environments, the missing network indices) and every derived file through the one writer
    of derived files, from all rows in global index order (``runs.csv`` last).

    Args:
        shard_dirs: shard directories (any order).
        out_dir: the merged sweep directory (new, or an earlier merge of the same sweep).
        allow_partial: merge even if networks are missing (recorded).

    Returns:
        The merged sweep, loaded back.

    Raises:
        ShardError: a one-line reason for any refusal.
        phasespace.io.checkpoint.ResumeError: ``out_dir`` holds another sweep or is in use.
    """
    if not shard_dirs:
        raise ShardError("merge: no shard directories given")
    real = [os.path.realpath(d) for d in shard_dirs]
    if os.path.realpath(out_dir) in real:
        raise ShardError(f"merge: --out {out_dir} is one of the shard directories; choose a new one")
    twice = sorted({d for d, r in zip(shard_dirs, real, strict=True) if real.count(r) > 1})
    if twice:
        raise ShardError(f"merge: {', '.join(twice)} given more than once; give each shard once")
    parts = sorted((_read_part(d) for d in shard_dirs), key=lambda p: (p.spec.shard["index"], p.path))
    _check_same_sweep(parts)
    spec = parts[0].spec.sweep
    n_networks = len(expand(spec))
    missing = _check_cover(parts, n_networks, allow_partial)
    rows = sorted((r for p in parts for r in p.rows), key=lambda r: int(r["index"]))
    if not rows:
        raise ShardError("merge: none of the given shards has a finished bucket; nothing to merge")
    pos = {int(r["index"]): k for k, r in enumerate(rows)}
    histories = [([pos[i] for i in idx], h) for p in parts for idx, h in p.histories]
    record = {
        "fingerprint": parts[0].spec.shard["fingerprint"],
        "networks": len(rows),
        "sweep_networks": n_networks,
        "complete": not missing,
        "missing_networks": missing,
        "shards": [
            {
                "dir": os.path.abspath(p.path),
                "index": p.spec.shard["index"],
                "count": p.spec.shard["count"],
                "networks": p.claimed,
                "finished_networks": sorted(int(r["index"]) for r in p.rows),
                "unfinished_buckets": p.unfinished,
            }
            for p in parts
        ],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    check_sweep_dir(out_dir, spec)
    with sweep_lock(out_dir):
        store.remove_stale_temporaries(out_dir)
        with contextlib.suppress(FileNotFoundError):  # a new merge is unfinished until its runs.csv
            os.remove(os.path.join(out_dir, "runs.csv"))
        toml = os.path.join(parts[0].path, "spec.toml")
        if os.path.exists(toml):
            with open(toml, "rb") as f:
                store.write_bytes(os.path.join(out_dir, "spec.toml"), f.read())
        store.write_json(os.path.join(out_dir, "spec.json"), spec.resolved())
        os.makedirs(os.path.join(out_dir, PARAMS_DIR), exist_ok=True)
        _merge_params(parts, out_dir, set(pos))
        store.write_json(os.path.join(out_dir, MERGE_FILE), record)
        store.write_json(os.path.join(out_dir, "environment.json"), _environment(parts, record))
        write_results(out_dir, rows, runs_columns(spec), spec, histories)
    return store.load_sweep(out_dir)


def _environment(parts: Sequence[_Part], record: Mapping[str, Any]) -> dict[str, Any]:
    """``environment.json`` of a merged sweep: the merge and each shard's own environment."""
    shards = []
    wall = 0.0
    for p in parts:
        env: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError), open(os.path.join(p.path, "environment.json")) as f:
            env = json.load(f)
        wall += float(env.get("wall_seconds") or 0.0)
        shards.append({"dir": os.path.abspath(p.path), "shard": p.spec.label, "environment": env})
    return {
        "merged": True,
        "networks": record["networks"],
        "sweep_networks": record["sweep_networks"],
        "missing_networks": record["missing_networks"],
        "wall_seconds": wall,
        "shards": shards,
        "date": record["date"],
    }
