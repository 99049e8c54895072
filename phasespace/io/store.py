"""Sweep directory layout, atomic writes and loading results back.

A sweep directory holds::

    spec.toml          the spec as given          spec.json        the resolved spec
    environment.json   versions, devices, precision, wall times
    runs.csv           one row per network: its axis values and every metric (plain CSV)
    phase.npz          phase-diagram arrays with named axes and coordinates
    history.npz        per-network training curves (run axis × logged step)
    figures/*.png      plots
    checkpoints/       orbax checkpoints per bucket (resume points, :mod:`phasespace.io.checkpoint`)

Every file is written to a temporary name in the same folder and renamed into place, so a reader
never sees a partial file; ``runs.csv`` is written last and marks a finished sweep.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import io
import json
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from phasespace import hooks

TMP_SUFFIX = ".tmp"
"""Suffix of the temporary files of :func:`atomic_path`."""


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (``.<name>.<random>.tmp``, created with the
    umask's permissions); on success it is fsynced and renamed onto ``path`` (``os.replace``,
    atomic on POSIX), on error it is removed. A process killed in between leaves only the
    temporary file (see :func:`remove_stale_temporaries`), never a partial ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    while True:
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        hooks.emit("file_ready", path=path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete temporaries left by :func:`atomic_path` in a killed process (``.<name>.*.tmp``
    in ``folder`` and its ``figures/``); call only while no other process writes ``folder``.

    Returns:
        The paths removed.
    """
    removed = []
    for sub in (folder, os.path.join(folder, "figures")):
        if not os.path.isdir(sub):
            continue
        for name in os.listdir(sub):
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(sub, name))
                    removed.append(os.path.join(sub, name))
    return removed


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez_compressed`` to ``path`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes(path, buf.getvalue())


def write_csv(path: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """A plain CSV (header + one line per row) written atomically; floats with 9 significant
    digits, NaN as ``nan``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c, "")) for c in columns])
    write_text(path, buf.getvalue())


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.9g}"
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def read_csv(path: str) -> dict[str, np.ndarray]:
    """Read a runs table (``.csv``, or gzipped ``.csv.gz``) into columns: numeric columns as
    float64/int64 arrays, ``true``/``false`` as bool, anything else as str."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        col = [r[j] if j < len(r) else "" for r in body]
        out[name] = _parse_column(col)
    return out


def _parse_column(col: list[str]) -> np.ndarray:
    if col and all(c in ("true", "false") for c in col):
        return np.asarray([c == "true" for c in col])
    try:
        ints = [int(c) for c in col]
        return np.asarray(ints, dtype=np.int64)
    except ValueError:
        pass
    try:
        return np.asarray([float(c) if c != "" else np.nan for c in col], dtype=np.float64)
    except ValueError:
        return np.asarray(col, dtype=str)


@dataclasses.dataclass
class SweepResult:
    """A sweep directory loaded back into arrays.

    Attributes:
        path: the directory.
        spec: the resolved spec (dict).
        environment: versions, devices, precision, timings.
        runs: the per-network table as columns, each of shape (R,).
        phase: the phase-diagram arrays (see :func:`phasespace.phase.diagram.grid_arrays`): ``axes``
            names, ``coord__<axis>`` coordinates and one array per metric and statistic.
        history: training curves, each (R, n_logged), with ``step`` (n_logged,).
    """

    path: str
    spec: dict[str, Any]
    environment: dict[str, Any]
    runs: dict[str, np.ndarray]
    phase: dict[str, np.ndarray]
    history: dict[str, np.ndarray]

    def metric(self, name: str) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
        """A phase-diagram array with its axis names and coordinates.

        Returns:
            ``(array, axes, coords)``; e.g. ``metric("gradient_symmetricity__mean")``.

        Raises:
            KeyError: naming the available arrays.
        """
        if name not in self.phase:
            raise KeyError(f"{name!r} not in phase arrays; available: {sorted(self.phase)}")
        family = f"dims__{name.split('__')[0]}"
        if family in self.phase:  # binned arrays of phasespace.phase.diagram.phase_arrays
            dims = [str(a) for a in self.phase[family]]
            return self.phase[name], dims, {a: self.phase[f"coord__{a}"] for a in dims}
        axes_key = "axes_reduced" if "__" in name and not name.startswith("coord__") else "axes"
        axes = [str(a) for a in self.phase[axes_key]]
        coords = {a: self.phase[f"coord__{a}"] for a in axes}
        return self.phase[name], axes, coords


def load_sweep(path: str) -> SweepResult:
    """Load a finished sweep directory written by ``phasespace run``.

    Raises:
        FileNotFoundError: if ``path`` has no ``runs.csv`` (not a finished sweep).
    """
    runs_path = os.path.join(path, "runs.csv")
    if not os.path.exists(runs_path):
        raise FileNotFoundError(f"{path}: no runs.csv; not a finished sweep directory")

    def load_json(name: str) -> dict[str, Any]:
        p = os.path.join(path, name)
        if not os.path.exists(p):
            return {}
        with open(p) as f:
            return json.load(f)

    def load_npz(name: str) -> dict[str, np.ndarray]:
        p = os.path.join(path, name)
        if not os.path.exists(p):
            return {}
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    return SweepResult(
        path=path,
        spec=load_json("spec.json"),
        environment=load_json("environment.json"),
        runs=read_csv(runs_path),
        phase=load_npz("phase.npz"),
        history=load_npz("history.npz"),
    )
