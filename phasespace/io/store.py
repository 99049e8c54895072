"""Sweep directory layout, atomic writes and loading results back.

A sweep directory holds::

    spec.toml          the spec as given          spec.json        the resolved spec
    environment.json   versions, devices, precision, wall times
    runs.csv           one row per network: its axis values and every metric (plain CSV)
    phase.npz          phase-diagram arrays with named axes and coordinates
    history.npz        per-network training curves (run axis × logged step)
    analysis.npz       per-network array metrics (circles, per-(a − b) accuracy)
    figures/*.png      plots
    checkpoints/       orbax checkpoints per bucket (resume points, :mod:`phasespace.io.checkpoint`)

``runs.csv`` has one fixed type per column (:mod:`phasespace.io.table`): a missing number is
``nan``, missing text the empty string; :func:`load_sweep` reads it by that schema.

``spec.json`` is the spec with every default filled in (:meth:`SweepSpec.to_dict
<phasespace.spec.parse.SweepSpec.to_dict>`, the fields compared on resume) plus ``resolved``:
values the spec leaves to the model family or to each network (:meth:`SweepSpec.resolved
<phasespace.spec.parse.SweepSpec.resolved>`): the training recipe of each model family (``b2``,
``warmup_steps``, …) and the split seed (``data_seed``: the axis value, with −1 written as
``"seed"``, the network's own seed; ``runs.csv`` holds each network's resolved split seed).

``analysis.npz`` holds arrays (R, ...) in ``runs.csv`` order. Float arrays are NaN where a value is
missing. Integer arrays (``pc_frequency``, ``pc_delta``, ``pc_frequency_b``, ``circle_frequency``,
``circle_delta``, ``circle_components``, ``circle_accompanies``) hold 0 in an empty circle slot and
for a circle that accompanies none (a key frequency, δ or count is never 0 otherwise), and −1 in
the padding added where buckets have different numbers of slots or components.

Every file is written to a temporary name in the same folder and renamed into place, so a reader
never sees a partial file; ``runs.csv`` is written last and marks a finished sweep.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import hashlib
import importlib
import io
import json
import os
import secrets
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from phasespace import hooks
from phasespace.io.table import column_dtype

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


class SchemaWarning(UserWarning):
    """A table column the schema does not know (read by inference)."""


def write_csv(
    path: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    schema: Callable[[str], str | None] = column_dtype,
) -> None:
    """A plain CSV (header + one line per row) written atomically.

    Each value is formatted by its column's type (``schema(name)``, default the runs-table schema
    :func:`phasespace.io.table.column_dtype`): float64 with round-trip precision, NaN and a
    missing float as ``nan``, infinities as ``inf``/``-inf``; int64 as an integer; bool as
    ``true``/``false``; str as is, a missing one as the empty string. Columns the schema does not
    know are formatted by the value's own type. A float reads back exactly at the precision it
    was computed in: a value that is exactly a float32 as the shortest decimal of that float32
    (``0.7352246``), any other as the shortest decimal of the float64 (``0.03``).

    Raises:
        ValueError: naming the column and row, for a value that does not fit its column's type
            (e.g. a missing or NaN value in an int64 or bool column).
    """
    dtypes = [schema(c) for c in columns]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for i, r in enumerate(rows):
        line = []
        for c, t in zip(columns, dtypes, strict=True):
            try:
                line.append(_fmt(r.get(c), t))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}: row {i}, column {c!r} ({t}): {e}") from None
        w.writerow(line)
    write_text(path, buf.getvalue())


def _fmt_float(v: Any) -> str:
    # Decided by the value, not its container (a float32 read back from result.json is a Python
    # float): a value that is exactly a float32 is written as the shortest string that reads back
    # to that float32, any other as the shortest that reads back to the same float64.
    x = float(v)
    x32 = np.float32(x)
    return str(x32) if np.isfinite(x) and float(x32) == x else repr(x)


def _fmt(v: Any, dtype: str | None) -> str:
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v[()]
    missing = v is None or (isinstance(v, str) and v == "")
    if dtype == "float64":
        if missing:
            return "nan"
        if isinstance(v, (bool, np.bool_, str)):
            raise TypeError(f"{v!r} is not a number")
        return _fmt_float(v)
    if dtype == "int64":
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        if missing or isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{v!r} is not an integer")
        return str(int(v))
    if dtype == "bool":
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{v!r} is not true or false")
        return "true" if v else "false"
    if dtype == "str":
        if missing or (isinstance(v, (float, np.floating)) and np.isnan(v)):
            return ""
        return str(v)
    if missing:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (float, np.floating)):
        return _fmt_float(v)
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def read_csv(path: str, schema: Callable[[str], str | None] | None = None) -> dict[str, np.ndarray]:
    """Read a table (``.csv``, or gzipped ``.csv.gz``) into columns, each typed by ``schema``
    (e.g. the runs-table schema :func:`phasespace.io.table.column_dtype`, as :func:`read_runs`
    does): int64, float64 (an empty cell is NaN), bool (``true``/``false``) or str arrays.

    A column the schema does not know (or every column, with ``schema=None``, for tables of other
    origin such as the published sweeps) is typed by inference (integers → int64, numbers →
    float64, ``true``/``false`` → bool, else str), with a :class:`SchemaWarning` when a schema was
    given.

    Raises:
        ValueError: naming the file, the column and the cell, for a value that does not parse as
            its column's type; naming the file if it is empty or not a CSV text file.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error, gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: not a CSV text table ({e})") from e
    if not rows or not rows[0]:
        raise ValueError(f"{path}: empty; expected a CSV table with a header row")
    header, body = rows[0], rows[1:]
    out: dict[str, np.ndarray] = {}
    unknown = []
    for j, name in enumerate(header):
        col = [r[j] if j < len(r) else "" for r in body]
        dtype = schema(name) if schema is not None else None
        if dtype is None:
            unknown.append(name)
            out[name] = _parse_column(col)
            continue
        try:
            out[name] = _parse_typed(col, dtype)
        except ValueError as e:
            raise ValueError(f"{path}: column {name!r} ({dtype}): {e}") from None
    if unknown and schema is not None:
        warnings.warn(
            f"{path}: columns {unknown} are not in the runs-table schema; their types were inferred",
            SchemaWarning,
            stacklevel=2,
        )
    return out


def read_runs(path: str) -> dict[str, np.ndarray]:
    """A ``runs.csv`` read by the runs-table schema (:mod:`phasespace.io.table`): every column
    has its one fixed type whatever its values."""
    return read_csv(path, column_dtype)


def _parse_typed(col: list[str], dtype: str) -> np.ndarray:
    if dtype == "str":
        return np.asarray(col, dtype=str)
    if dtype == "bool":
        bad = [c for c in col if c not in ("true", "false")]
        if bad:
            raise ValueError(f"{bad[0]!r} is not true or false")
        return np.asarray([c == "true" for c in col], dtype=bool)
    if dtype == "int64":
        return np.asarray([int(c) for c in col], dtype=np.int64)
    return np.asarray([float(c) if c != "" else np.nan for c in col], dtype=np.float64)


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


def _optional(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"this needs the optional dependency {module!r}: pip install phasespace[{extra}]"
        ) from e


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

    def to_pandas(self) -> Any:
        """The runs table as a ``pandas.DataFrame`` (one row per network, columns in
        ``runs.csv`` order, typed by the schema).

        Raises:
            ImportError: without pandas (``pip install phasespace[pandas]``).
        """
        pd = _optional("pandas", "pandas")
        return pd.DataFrame(dict(self.runs))

    def to_xarray(self) -> Any:
        """The phase-diagram arrays as an ``xarray.Dataset``: each array with its named
        dimensions and coordinates (:meth:`metric`), bin edges as ``edges__<dim>`` over
        ``<dim>_edge``, text entries (the binning options) as attributes.

        Raises:
            ImportError: without xarray (``pip install phasespace[xarray]``).
        """
        xr = _optional("xarray", "xarray")
        coords = {k[len("coord__") :]: v for k, v in self.phase.items() if k.startswith("coord__")}
        data: dict[str, Any] = {}
        attrs: dict[str, Any] = {}
        for name, arr in self.phase.items():
            if name.startswith(("coord__", "dims__")) or name in ("axes", "axes_reduced"):
                continue
            if name.startswith("edges__"):
                data[name] = ((f"{name[len('edges__') :]}_edge",), arr)
            elif arr.dtype.kind in "US" and (arr.ndim == 0 or name == "family_axes"):
                # e.g. the binning options (JSON), the columns that define a family
                attrs[name] = str(arr) if arr.ndim == 0 else [str(x) for x in arr]
            else:
                _, dims, _ = self.metric(name)
                data[name] = (tuple(dims), arr)
        return xr.Dataset(data, coords=coords, attrs=attrs)

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
        return read_json_object(p)

    def load_npz(name: str) -> dict[str, np.ndarray]:
        p = os.path.join(path, name)
        if not os.path.exists(p):
            return {}
        return read_npz(p, f"{name} (re-run `phasespace run` on the sweep to rewrite it)")

    return SweepResult(
        path=path,
        spec=load_json("spec.json"),
        environment=load_json("environment.json"),
        runs=read_runs(runs_path),
        phase=load_npz("phase.npz"),
        history=load_npz("history.npz"),
    )


def read_json_object(path: str) -> dict[str, Any]:
    """A JSON file holding one object (a sweep's ``spec.json``, ``environment.json``, …).

    Raises:
        FileNotFoundError: if ``path`` is missing.
        ValueError: naming the file, if it is not readable JSON or not an object.
    """
    with open(path) as f:
        try:
            obj = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: not readable JSON, truncated or corrupt ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a JSON {type(obj).__name__}, expected an object")
    return obj


def read_npz(path: str, what: str = "file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickles), read in full.

    Raises:
        FileNotFoundError: if ``path`` is missing.
        ValueError: naming the file if it is not a readable ``.npz`` (truncated or corrupt).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error) as e:
        raise ValueError(
            f"{path}: not a readable .npz {what}, truncated or corrupt ({type(e).__name__}: {e})"
        ) from None


def file_digest(path: str) -> str | None:
    """SHA-256 of a file's bytes (hex), None if it does not exist (for manifests: a file read
    back later is checked against the digest recorded when it was written)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return h.hexdigest()
