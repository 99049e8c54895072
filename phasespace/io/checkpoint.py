"""Checkpoints and resume: a killed sweep continues where it stopped and gives the same results.

Layout under a sweep directory::

    .phasespace.lock               held (``flock``) by the run writing the directory
    checkpoints/<bucket key>/      an orbax ``CheckpointManager`` root, one per bucket
        <step>/state               the stacked :class:`~phasespace.training.step.TrainState` (params,
                                   AdamW state, step, first-full steps, collapse and non-finite
                                   flags, early-stop counter), one array per leaf, leading run axis R
        <step>/history             the logged training curves so far, (R, n_logged) + ``step``
        <step>/meta                JSON: the resolved spec's result fields, the bucket, its
                                   networks, the leaf paths/shapes/dtypes and a CRC-32 of each
                                   array
        result.json                the bucket's finished runs-table rows (with their dtypes) and
                                   logged history, and the SHA-256 of the files it wrote that a
                                   resume does not rewrite (``params/<key>.npz``, the metrics
                                   history): a missing or damaged one is rewritten by re-analysing
                                   the bucket from its final checkpoint (retraining it if none is left)
        _corrupt/<step>-<n>/       checkpoints that failed to restore, moved aside

orbax writes each step into a temporary folder and renames it into place once complete, so a
kill during a save leaves the previous checkpoint as the latest complete one; leftover temporary
folders are removed when the manager opens. Training is deterministic (a minibatch order depends
only on the network's data and the step, the early-stop counter is part of the state), so
resuming from a checkpoint of step s reproduces the uninterrupted run bit for bit on the same
backend. A checkpoint or spec stored before a state field or spec key was added resumes with the
value that reproduces its behaviour (:data:`ADDED_LEAVES`,
:data:`phasespace.spec.parse.ADDED_KEYS`).

Refusals (before any compute): resuming with a spec whose result-changing fields differ
(:class:`ResumeError` naming each field, its stored and its new value) and a second run writing
the same directory. A checkpoint that fails to restore or whose checksum does not match is
skipped in favour of the previous one, with a :class:`CheckpointWarning`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import sys
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from phasespace.defaults import THRESHOLDS
from phasespace.io import store
from phasespace.population.buckets import Bucket
from phasespace.spec.parse import ADDED_KEYS, MOVED_KEYS, SpecError, SweepSpec
from phasespace.training.step import HISTORY_FIELDS, TrainState

T = TypeVar("T")

FORMAT = 2
"""Version of the checkpoint layout written by this module (2: the run record in the state;
checkpoints of format 1 are not resumed from, their bucket is trained afresh)."""

RESUME_FREE_FIELDS = (
    "name",
    "train.chunk_steps",
    "train.checkpoint_every",
    *(f"analysis.{k}" for k in THRESHOLDS),
    *(k for k in MOVED_KEYS if k.startswith("analysis.")),
)
"""Spec fields that may change between a run and its resume (they do not change results: chunk
boundaries do not change the arithmetic of the scanned steps; the label thresholds, under their
names of today and of earlier specs, are applied to the finished table). Every other field of
the resolved spec must match, including ``train.log_every`` (it fixes which history columns are
kept)."""

RESUME_FREE_TABLES = ("phase.", "resolved.")
"""Spec tables that may change too: the phase diagram's binning and thresholds are applied after
training, to the finished table; ``resolved`` (in ``spec.json``, :meth:`SweepSpec.resolved`) is
derived from the compared fields (and absent from the ``spec.json`` of older sweeps)."""

ADDED_LEAVES: dict[str, int] = {".stop_count": 0, ".stopped_step": -1}
"""State leaves added to format 2 since (the early-stop counter and step, the last fields of
:class:`~phasespace.training.step.TrainState`) → their initial value: a checkpoint saved before
them had no early stopping, so it resumes exactly with these values."""

KEEP_CHECKPOINTS = 2
"""Complete checkpoints kept per bucket (the latest and one to fall back on)."""


class ResumeError(SpecError):
    """Refusal to resume: the sweep directory belongs to a different spec, or is in use."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt or partial) in favour of an earlier one."""


# --------------------------------------------------------------------------------------------- #
# Spec comparison


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resume_fields(spec: SweepSpec | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved spec as dotted fields (``"axes.lr"``, ``"train.steps"``, …), without
    :data:`RESUME_FREE_FIELDS`: everything a checkpoint must agree on to be resumed.

    Args:
        spec: a spec, or its resolved dict (:meth:`SweepSpec.to_dict`, as stored in ``spec.json``).

    Values are JSON-normalised (tuples as lists), so stored and fresh fields compare equal.
    """
    d = spec.to_dict() if isinstance(spec, SweepSpec) else spec
    flat = _flatten(json.loads(json.dumps(d)))
    return {
        k: v
        for k, v in sorted(flat.items())
        if k not in RESUME_FREE_FIELDS and not k.startswith(RESUME_FREE_TABLES)
    }


def spec_diff(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Field-level differences between two :func:`resume_fields` dicts.

    Returns:
        One line per differing field, ``"<field>: <stored> (stored) ≠ <new> (this spec)"``,
        sorted by field; a field missing on one side shows ``(absent)``, except a key of
        :data:`~phasespace.spec.parse.ADDED_KEYS` missing from ``stored`` (a spec stored before
        it existed), which compares as its value there.
    """
    lines = []
    for k in sorted(set(stored) | set(new)):
        a, b = stored.get(k, ADDED_KEYS.get(k, "(absent)")), new.get(k, "(absent)")
        if a != b:
            lines.append(f"{k}: {a!r} (stored) ≠ {b!r} (this spec)")
    return lines


def _refuse(where: str, diff: list[str]) -> ResumeError:
    return ResumeError(
        f"{where} was made with a different spec; resuming would mix results. Differing fields:\n  "
        + "\n  ".join(diff)
        + "\nUse the original spec, or another --out directory to start afresh."
    )


def check_sweep_dir(out_dir: str, spec: SweepSpec) -> bool:
    """Check that ``out_dir`` is new or holds a sweep of the same spec (before any compute).

    Args:
        out_dir: the sweep directory.
        spec: the validated spec about to run.

    Returns:
        True if ``out_dir`` already holds (part of) a sweep of this spec, i.e. this run resumes.

    Raises:
        ResumeError: if ``out_dir`` is not a directory, or its ``spec.json`` differs from ``spec``
            in any result-changing field (each named with both values) or cannot be read.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ResumeError(f"--out {out_dir!r}: exists and is not a directory")
    path = os.path.join(out_dir, "spec.json")
    if not os.path.exists(path):
        return os.path.isdir(os.path.join(out_dir, "checkpoints"))
    try:
        stored = store.read_json_object(path)
    except (OSError, ValueError) as e:
        raise ResumeError(f"cannot read the stored spec ({e}); refusing to resume into it") from e
    diff = spec_diff(resume_fields(stored), resume_fields(spec))
    if diff:
        raise _refuse(f"the sweep directory {out_dir!r}", diff)
    return True


@contextlib.contextmanager
def sweep_lock(out_dir: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<out_dir>/.phasespace.lock`` (released on exit or kill).
    A directory this call created and left holding only the lock is removed on exit, with the
    parent folders it created for it (e.g. ``runs/``) that are left empty.

    Raises:
        ResumeError: if another process holds it (naming its pid).
    """
    new_dirs = []  # out_dir and the ancestors makedirs is about to create, innermost first
    d = os.path.abspath(out_dir)
    while not os.path.isdir(d):
        new_dirs.append(d)
        d = os.path.dirname(d)
    created = bool(new_dirs)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, ".phasespace.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise ResumeError(
                f"{out_dir!r}: another phasespace run (pid {other}) is writing this sweep directory"
            ) from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if created and os.listdir(out_dir) == [os.path.basename(path)]:
            # a run refused before writing anything leaves no directory behind (the corrected
            # spec then starts afresh on the same --out)
            with contextlib.suppress(OSError):
                os.unlink(path)
                for d in new_dirs:  # stops at the first that is not empty
                    os.rmdir(d)
        os.close(fd)


def exclusive_sweep_dir(run: Callable[..., T]) -> Callable[..., T]:
    """Decorate ``run(spec, out_dir, ...)`` (:func:`phasespace.sweep.run.run_sweep`): before any
    compute, :func:`check_sweep_dir` refuses a directory of another spec, then the call runs
    holding :func:`sweep_lock` on ``out_dir`` (so a second run on it is refused)."""

    @functools.wraps(run)
    def wrapper(spec: SweepSpec, out_dir: str, *args: Any, **kwargs: Any) -> T:
        if jax.process_index() != 0:  # a multi-process run: process 0 alone owns the directory
            return run(spec, out_dir, *args, **kwargs)
        check_sweep_dir(out_dir, spec)
        with sweep_lock(out_dir):
            return run(spec, out_dir, *args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------- #
# Logged history


def logged_steps(steps: int, log_every: int) -> np.ndarray:
    """Steps whose training curves are kept: every ``log_every``-th step from 0, and the last.

    Returns:
        int64 (n_logged,), sorted, unique.
    """
    if steps <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.r_[np.arange(0, steps, log_every), steps - 1]).astype(np.int64)


class LoggedHistory:
    """Training curves subsampled at :func:`logged_steps`, accumulated chunk by chunk.

    Args:
        steps, log_every: the recipe's total steps and the logging interval.
        start: the step the population is at (after a resume).
        arrays: the curves logged before ``start`` (from a checkpoint), each (R, n) float32.
    """

    def __init__(
        self, steps: int, log_every: int, start: int = 0, arrays: Mapping[str, np.ndarray] | None = None
    ):
        self.keep = logged_steps(steps, log_every)
        self.done = start
        n_before = int(np.sum(self.keep < start))
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in HISTORY_FIELDS}
        if arrays is not None:
            for k in HISTORY_FIELDS:
                a = np.asarray(arrays[k], np.float32)
                if a.ndim != 2 or a.shape[1] != n_before:
                    raise ValueError(f"history[{k!r}]: shape {a.shape}, expected (R, {n_before})")
                self.parts[k].append(a)
        elif start:
            raise ValueError(f"start={start}: the history before it is needed")

    def add(self, chunk: Mapping[str, np.ndarray]) -> None:
        """Append one chunk's curves (each (R, K), steps ``done … done + K − 1``)."""
        k = chunk[HISTORY_FIELDS[0]].shape[1]
        sel = self.keep[(self.keep >= self.done) & (self.keep < self.done + k)] - self.done
        for key in HISTORY_FIELDS:
            self.parts[key].append(np.asarray(chunk[key])[:, sel])
        self.done += k

    def arrays(self) -> dict[str, np.ndarray]:
        """The curves so far: each of :data:`~phasespace.training.step.HISTORY_FIELDS` (R, n) float32
        and ``step`` (n,) int64."""
        out = {k: np.concatenate(v, axis=1).astype(np.float32) for k, v in self.parts.items() if v}
        out["step"] = self.keep[self.keep < self.done]
        return out


# --------------------------------------------------------------------------------------------- #
# One bucket's checkpoints


def _checksums(groups: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, str]:
    """CRC-32 of each array's dtype, shape and bytes, keyed ``<group>/<name>`` (corruption
    detection at GB/s, so a checkpoint of a large population stays cheap)."""
    out = {}
    for g in sorted(groups):
        for k in sorted(groups[g]):
            a = np.ascontiguousarray(groups[g][k])
            crc = zlib.crc32(f"{a.dtype.str}{a.shape}".encode())
            out[f"{g}/{k}"] = f"{zlib.crc32(a.reshape(-1).view(np.uint8), crc):08x}"
    return out


def _leaf_names(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


class _Corrupt(Exception):
    pass


def _add_leaves(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], names: Sequence[str], template: Sequence[Any]
) -> Mapping[str, np.ndarray]:
    """The state arrays of a checkpoint saved before the leaves of :data:`ADDED_LEAVES` existed,
    with those leaves at their initial values (any other checkpoint unchanged)."""
    stored = [leaf.get("path") for leaf in meta.get("leaves") or [] if isinstance(leaf, Mapping)]
    missing = [n for n in names if n not in stored]
    if not missing or len(stored) != len(arrays) or stored != [n for n in names if n in stored]:
        return arrays
    if any(n not in ADDED_LEAVES for n in missing):
        return arrays  # not an older layout: _check_leaves names what is wrong
    by_name = {n: arrays[f"{i:04d}"] for i, n in enumerate(stored)}
    out = {}
    for i, (n, t) in enumerate(zip(names, template, strict=True)):
        out[f"{i:04d}"] = by_name[n] if n in by_name else np.full(t.shape, ADDED_LEAVES[n], t.dtype)
    return out


def _is_late_read_callback(unraisable: Any) -> bool:
    """An abandoned read's completion arriving on orbax's closed event loop (see below)."""
    exc = unraisable.exc_value
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
        return False
    return any(f.name == "call_soon_threadsafe" for f in traceback.extract_tb(unraisable.exc_traceback))


def _drop_late_read_callbacks() -> None:
    """Silence the completions of reads abandoned by a failed restore (installs a filter on
    ``sys.unraisablehook`` unless it is installed already).

    orbax runs each restore on a fresh event loop and closes it as soon as the first array read
    fails (a truncated or corrupt file); the other tensorstore reads of that checkpoint are still
    in flight, and when they complete tensorstore calls ``loop.call_soon_threadsafe`` on the
    closed loop, which Python reports as unraisable ``RuntimeError: Event loop is closed``
    tracebacks (one per read, seconds later). Their results are discarded anyway, and the failure
    itself is reported by the :class:`CheckpointWarning`; every other unraisable exception still
    reaches the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_phasespace_late_reads", False):
        return  # installed (and not replaced since)

    def hook(unraisable: Any) -> None:
        if not _is_late_read_callback(unraisable):
            previous(unraisable)

    hook._phasespace_late_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _row_dtypes(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``{field: dtype string}`` of the numeric NumPy values (arrays and scalars) of the rows."""
    out: dict[str, str] = {}
    for r in rows:
        for k, v in r.items():
            if isinstance(v, (np.ndarray, np.generic)) and v.dtype.kind in "biuf":
                out.setdefault(k, v.dtype.str)
    return out


def _typed_row(row: Mapping[str, Any], dtypes: Mapping[str, str]) -> dict[str, Any]:
    """A row read from JSON with its recorded dtypes (lists back to arrays, numbers to NumPy
    scalars); fields without a recorded dtype: lists become arrays, the rest as read."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in dtypes:
            a = np.asarray(v, dtype=np.dtype(dtypes[k]))
            out[k] = a if a.ndim else a[()]
        else:
            out[k] = np.asarray(v) if isinstance(v, list) else v
    return out


class BucketCheckpoint:
    """The checkpoints of one bucket under ``directory`` (an orbax ``CheckpointManager`` root).

    Args:
        directory: ``<sweep dir>/checkpoints/<bucket key>``.
        bucket: the bucket (its key and network indices are recorded and checked).
        spec: the sweep spec (its :func:`resume_fields` are recorded and checked).
    """

    def __init__(self, directory: str, bucket: Bucket, spec: SweepSpec):
        self.directory = os.path.abspath(directory)
        self.key = bucket.key
        self.networks = [int(n.index) for n in bucket.networks]
        self.fields = resume_fields(spec)
        self.every = int(spec.train["checkpoint_every"])
        self.steps = int(spec.recipe.steps)
        self.log_every = int(spec.train["log_every"])
        self.last_saved = -1
        self.resumed_from: dict[str, Any] | None = None
        self._mgr: ocp.CheckpointManager | None = None
        self.multi = jax.process_count() > 1
        self.writer = jax.process_index() == 0
        """In a multi-process run every process holds the full host state after each chunk;
        process 0 alone reads and writes the checkpoints and broadcasts what it read."""

    # -- orbax ------------------------------------------------------------------------------- #

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._mgr is None:
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(KEEP_CHECKPOINTS),
                cleanup_tmp_directories=True,
                enable_async_checkpointing=True,
                create=False,  # made below (orbax refuses to with active_processes)
                # process 0 alone: the other processes never touch the directory
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    primary_host=0, active_processes={0} if self.multi else None
                ),
            )
            os.makedirs(self.directory, exist_ok=True)
            self._mgr = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "history", "meta")
            )
        return self._mgr

    def close(self) -> None:
        """Wait for a pending save to commit and release the manager."""
        if self._mgr is not None:
            self._mgr.wait_until_finished()
            self._mgr.close()
            self._mgr = None

    def _check_identity(self, meta: Mapping[str, Any], where: str) -> None:
        diff = spec_diff(meta.get("fields", {}), self.fields)
        if diff:
            raise _refuse(where, diff)
        if meta.get("bucket") != self.key or meta.get("networks") != self.networks:
            raise ResumeError(
                f"{where}: holds bucket {meta.get('bucket')!r} with networks {meta.get('networks')}, "
                f"but this spec's bucket {self.key!r} has networks {self.networks} (the bucket plan "
                "changed, e.g. a different phasespace version); use another --out directory"
            )

    # -- saving ------------------------------------------------------------------------------ #

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after a chunk ending at ``step``: at least
        ``train.checkpoint_every`` steps since the last one, or the end of training."""
        return step >= self.steps or step - max(self.last_saved, 0) >= self.every

    def save(self, state: TrainState, history: Mapping[str, np.ndarray]) -> int:
        """Save the population state and logged history at its step (asynchronously; the arrays
        are copied to host first, so the caller may donate the device buffers afterwards).

        Returns:
            The step saved.
        """
        step = int(np.asarray(state.step).reshape(-1)[0])
        if not self.writer:
            self.last_saved = step
            return step
        leaves = [np.array(x) for x in jax.tree_util.tree_leaves(state)]
        arrays = {f"{i:04d}": a for i, a in enumerate(leaves)}
        hist = {k: np.array(v) for k, v in history.items()}
        meta = {
            "format": FORMAT,
            "fields": self.fields,
            "bucket": self.key,
            "networks": self.networks,
            "step": step,
            "leaves": [
                {"path": n, "shape": list(a.shape), "dtype": a.dtype.str}
                for n, a in zip(_leaf_names(state), leaves, strict=True)
            ],
            "crc32": _checksums({"state": arrays, "history": hist}),
            "backend": jax.default_backend(),
            "process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "saved_at": time.time(),
        }
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays),
                history=ocp.args.StandardSave(hist),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self.last_saved = step
        return step

    # -- restoring --------------------------------------------------------------------------- #

    def restore(self, template: TrainState) -> tuple[TrainState, dict[str, np.ndarray]] | None:
        """The latest complete checkpoint, checked against ``template``; in a multi-process run
        process 0 reads it and broadcasts it to every process (saved with another process or
        device count, it is used all the same and :attr:`resumed_from` records the change).

        Checkpoints are tried newest first; one that fails to restore, whose checksum, leaves,
        shapes or dtypes do not match, is moved to ``_corrupt/`` with a
        :class:`CheckpointWarning` and the previous one is tried.

        Args:
            template: the fresh state's structure (e.g. ``jax.eval_shape`` of the initial state);
                leaves (R, ...).

        Returns:
            ``(state, history)`` with host (NumPy) leaves, or None if no usable checkpoint exists.

        Raises:
            ResumeError: if a checkpoint was made with a different spec or bucket.
        """
        if not self.multi:
            return self._restore(template)
        got, error = None, None
        if self.writer:
            try:
                got = self._restore(template)
            except Exception as e:  # told to the other processes, which would wait forever
                error = e
        flag = -2 if error is not None else (-1 if got is None else int(np.asarray(got[0].step)[0]))
        flag = int(multihost_utils.broadcast_one_to_all(np.int64(flag)))
        if flag == -2:
            raise error or ResumeError(
                f"{self.directory}: process 0 refused to resume this bucket (see its message)"
            )
        if flag == -1:
            return None
        if got is None:  # the shapes to receive into
            t_leaves, treedef = jax.tree_util.tree_flatten(template)
            state = jax.tree_util.tree_unflatten(treedef, [np.zeros(t.shape, t.dtype) for t in t_leaves])
            n_before = int(np.sum(logged_steps(self.steps, self.log_every) < flag))
            r = t_leaves[0].shape[0]
            hist = {k: np.zeros((r, n_before), np.float32) for k in HISTORY_FIELDS}
            hist["step"] = np.zeros(n_before, np.int64)
            got = (state, hist)
        state, hist = multihost_utils.broadcast_one_to_all(got)
        state = jax.tree_util.tree_map(np.asarray, state)
        hist = {k: np.asarray(v) for k, v in hist.items()}
        self.last_saved = flag
        return state, hist

    def _restore(self, template: TrainState) -> tuple[TrainState, dict[str, np.ndarray]] | None:
        names = _leaf_names(template)
        t_leaves, treedef = jax.tree_util.tree_flatten(template)
        _drop_late_read_callbacks()  # before a read can fail: its siblings complete later
        for step in sorted(self.manager.all_steps(), reverse=True):
            where = f"checkpoint {os.path.join(self.directory, str(step))}"
            try:
                got = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(),
                        history=ocp.args.StandardRestore(),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                meta = got["meta"]
                if isinstance(meta, dict) and isinstance(meta.get("format"), int) and meta["format"] < FORMAT:
                    raise _Corrupt(
                        f"written by an older phasespace (format {meta['format']}, this one reads {FORMAT}: "
                        "the state now holds the run record); the bucket is trained afresh"
                    )
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    raise _Corrupt(f"metadata {meta!r:.80}: not a phasespace checkpoint of format {FORMAT}")
                self._check_identity(meta, where)
                arrays = {k: np.asarray(v) for k, v in got["state"].items()}
                hist = {k: np.asarray(v) for k, v in got["history"].items()}
                crc = _checksums({"state": arrays, "history": hist})
                stored = meta.get("crc32") or {}
                bad = sorted(k for k in set(crc) | set(stored) if crc.get(k) != stored.get(k))
                if bad:
                    raise _Corrupt(f"arrays {bad[:5]} do not match the checksums recorded at save time")
                arrays = _add_leaves(arrays, meta, names, t_leaves)
                leaves = self._check_leaves(arrays, names, t_leaves)
                if meta.get("step") != step or any(
                    int(s) != step for s in np.ravel(leaves[names.index(".step")])
                ):
                    raise _Corrupt(f"the state is not at step {step}")
                if meta.get("backend") != jax.default_backend():
                    warnings.warn(
                        f"{where}: saved on backend {meta.get('backend')!r}, resumed on "
                        f"{jax.default_backend()!r}; the results will not be bit-identical to an "
                        "uninterrupted run",
                        CheckpointWarning,
                        stacklevel=2,
                    )
                counts = {k: meta.get(k) for k in ("process_count", "device_count")}
                now = {"process_count": jax.process_count(), "device_count": jax.device_count()}
                if counts != now:
                    self.resumed_from = {"step": step, **counts}
                    warnings.warn(
                        f"{where}: saved by {counts['process_count']} process(es) with "
                        f"{counts['device_count']} device(s), resumed by {now['process_count']} with "
                        f"{now['device_count']}; recorded in environment.json (results agree to "
                        "float32 rounding)",
                        CheckpointWarning,
                        stacklevel=2,
                    )
                self.last_saved = step
                return jax.tree_util.tree_unflatten(treedef, leaves), hist
            except ResumeError:
                raise
            except Exception as e:  # any failure to read is a corrupt or partial checkpoint
                self._quarantine(step, where, e)
        return None

    def _check_leaves(
        self, arrays: Mapping[str, np.ndarray], names: Sequence[str], template: Sequence[Any]
    ) -> list[np.ndarray]:
        if len(arrays) != len(template):
            raise _Corrupt(f"{len(arrays)} state arrays, expected {len(template)}")
        out = []
        for i, (name, t) in enumerate(zip(names, template, strict=True)):
            a = arrays.get(f"{i:04d}")
            if a is None:
                raise _Corrupt(f"state leaf {name}: missing")
            if a.shape != tuple(t.shape) or a.dtype != t.dtype:
                raise _Corrupt(
                    f"state leaf {name}: expected shape {tuple(t.shape)} {t.dtype}, found {a.shape} {a.dtype}"
                )
            out.append(a)
        return out

    def _quarantine(self, step: int, where: str, err: BaseException) -> None:
        src = os.path.join(self.directory, str(step))
        dst_dir = os.path.join(self.directory, "_corrupt")
        os.makedirs(dst_dir, exist_ok=True)
        n = 0
        while os.path.exists(dst := os.path.join(dst_dir, f"{step}-{n}")):
            n += 1
        with contextlib.suppress(FileNotFoundError):
            shutil.move(src, dst)
        self.manager.reload()
        warnings.warn(
            f"{where} is corrupt or partial ({type(err).__name__}: {str(err)[:300]}); moved to {dst} "
            "and falling back to the previous checkpoint",
            CheckpointWarning,
            stacklevel=3,
        )

    # -- finished buckets -------------------------------------------------------------------- #

    @property
    def result_path(self) -> str:
        return os.path.join(self.directory, "result.json")

    def save_result(
        self,
        rows: Sequence[Mapping[str, Any]],
        history: Mapping[str, np.ndarray],
        files: Sequence[str] = (),
    ) -> None:
        """Record the finished bucket (its runs-table rows and logged history), atomically
        (process 0 alone).

        The dtype of every NumPy value of the rows (arrays and scalars) is recorded beside them
        (``dtypes``), so :meth:`load_result` gives back the values of an uninterrupted run with
        their dtypes (``analysis.npz`` keeps its float32/int32 arrays after a resume).

        Args:
            rows, history: the bucket's runs-table rows and logged training curves.
            files: files the bucket wrote and a resume does not rewrite (its final parameters,
                ``params/<key>.npz``, its metrics history); their SHA-256 digests are recorded
                (``files``, paths relative to the bucket's directory) and checked by
                :meth:`load_result`.
        """
        self.close()
        if not self.writer:
            return
        store.write_json(
            self.result_path,
            {
                "format": FORMAT,
                "fields": self.fields,
                "bucket": self.key,
                "networks": self.networks,
                "rows": list(rows),
                "dtypes": _row_dtypes(rows),
                "files": {os.path.relpath(f, self.directory): store.file_digest(f) for f in files},
                "history": {k: np.asarray(v) for k, v in history.items()},
            },
        )

    def load_result(self) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]] | None:
        """The finished bucket's rows and history if recorded, else None (an unreadable record,
        or one whose recorded files are missing or damaged, is ignored with a
        :class:`CheckpointWarning`; the bucket is then re-analysed from its final checkpoint, or
        retrained if none is left, which rewrites those files).

        In a multi-process run process 0 reads it; the others get ``([], {})`` when it is
        finished (process 0 alone writes the results).

        Raises:
            ResumeError: if the record was made with a different spec or bucket.
        """
        if not self.multi:
            return self._load_result()
        got, error = None, None
        if self.writer:
            try:
                got = self._load_result()
            except Exception as e:  # told to the other processes, which would wait forever
                error = e
        flag = int(multihost_utils.broadcast_one_to_all(np.int64(-2 if error else (got is not None))))
        if flag == -2:
            raise error or ResumeError(f"{self.result_path}: process 0 refused it (see its message)")
        if not flag:
            return None
        return got if got is not None else ([], {})

    def _load_result(self) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]] | None:
        if not os.path.exists(self.result_path):
            return None
        try:
            with open(self.result_path) as f:
                rec = json.load(f)
            if rec.get("format") != FORMAT:
                raise ValueError(f"format {rec.get('format')!r}, expected {FORMAT}")
            self._check_identity(rec, self.result_path)
            rows = [_typed_row(r, rec.get("dtypes") or {}) for r in rec["rows"]]
            hist = {k: np.asarray(v, np.float32) for k, v in rec["history"].items() if k != "step"}
            hist["step"] = np.asarray(rec["history"]["step"], np.int64)
            if [r["index"] for r in rows] != self.networks:
                raise ValueError("rows do not match the bucket's networks")
            files = rec.get("files") or {}
        except ResumeError:
            raise
        except Exception as e:
            warnings.warn(
                f"{self.result_path}: unreadable ({type(e).__name__}: {e}); ignoring it",
                CheckpointWarning,
                stacklevel=2,
            )
            return None
        for rel, digest in sorted(files.items()):
            path = os.path.normpath(os.path.join(self.directory, rel))
            found = store.file_digest(path)
            if found != digest:
                state = "is missing" if found is None else "differs from the checksum recorded when written"
                warnings.warn(
                    f"{path} {state}; re-analysing bucket {self.key} from its final checkpoint (or "
                    "retraining it when none is left) to rewrite it",
                    CheckpointWarning,
                    stacklevel=2,
                )
                return None
        return rows, hist
