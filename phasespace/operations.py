"""Binary operations on Z_p: the task's labels c = f(a, b) mod p (the spec axis ``operation``).

The paper's reference code (``fjzzq2002/pizza``, ``code/train-main.py``) trains any function of
(a, b) into Z_p (its ``funcs``); the engine's default, and the paper's task, is addition. Every
operation has the same program shape (p² inputs, p classes), so the operation is per-network
*data*: each network's labels are one row of the population's ``labels`` (R, p²)
(:func:`phasespace.population.stack.network_hparams`).

Built in (:data:`BUILTIN`): ``add`` (a + b), ``sub`` (a − b), ``mul`` (a·b), ``x2_plus_y2``
(a² + b²), ``x2_plus_xy_plus_y2`` (a² + ab + b²), ``x3_plus_xy`` (a³ + ab), all mod p. Another
one is registered from Python with :func:`register_operation`; it exists only in the process that
registered it, so ``phasespace run/analyze/show/report --import MODULE`` imports a module that
registers it before the spec is read.

NumPy only (below :mod:`phasespace.spec`, which validates names, and :mod:`phasespace.tasks`,
which builds the labels).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from phasespace.defaults import PAPER_AXES

ADDITION: str = PAPER_AXES["operation"]
"""The paper's operation, ``"add"`` (the default of the ``operation`` axis)."""

MAX_P = 2**31
"""Labels are computed in int64, reducing mod p after every product: exact for p < 2³¹."""

CHECK_P = 7
"""The modulus a registered operation is checked at when it is registered."""

OperationFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Operation:
    """One operation: ``fn(a, b, p)`` maps int64 arrays a, b (N,) with values in [0, p) to
    integer labels (N,) in [0, p); ``description`` is its formula in words."""

    name: str
    fn: OperationFn
    description: str
    builtin: bool = False


def _add(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    return (a + b) % p


def _sub(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    return (a - b) % p


def _mul(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    return (a * b) % p


def _x2_plus_y2(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    return (a * a % p + b * b % p) % p


def _x2_plus_xy_plus_y2(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    return (a * a % p + a * b % p + b * b % p) % p


def _x3_plus_xy(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    return ((a * a % p) * a % p + a * b % p) % p


BUILTIN: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("add", _add, "(a + b) mod p (the paper's task)", True),
        Operation("sub", _sub, "(a − b) mod p", True),
        Operation("mul", _mul, "(a · b) mod p", True),
        Operation("x2_plus_y2", _x2_plus_y2, "(a² + b²) mod p", True),
        Operation("x2_plus_xy_plus_y2", _x2_plus_xy_plus_y2, "(a² + ab + b²) mod p", True),
        Operation("x3_plus_xy", _x3_plus_xy, "(a³ + ab) mod p", True),
    )
}
"""The built-in operations, by name."""

_REGISTRY: dict[str, Operation] = dict(BUILTIN)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class OperationError(ValueError):
    """An unknown operation name, or a registered function whose labels are invalid."""


def names() -> list[str]:
    """The names of every operation known to this process: the built-in ones, then the
    registered ones in registration order."""
    return list(_REGISTRY)


def unknown_message(name: object) -> str:
    """The explanation for an unknown operation name: the registered names and how to add one."""
    return (
        f"unknown operation {name!r}; registered operations: {', '.join(names())}. Register another "
        "from Python with phasespace.register_operation(name, fn) in a module, and pass that module "
        "to the command line with --import MODULE"
    )


def get(name: str) -> Operation:
    """The operation called ``name``.

    Raises:
        OperationError: if no operation of that name is registered (:func:`unknown_message`).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise OperationError(unknown_message(name))
    return _REGISTRY[name]


def _checked(op: Operation, p: int) -> np.ndarray:
    a, b = np.divmod(np.arange(p * p, dtype=np.int64), p)
    where = f"operation {op.name!r} at p={p}"
    try:
        out = op.fn(a.copy(), b.copy(), p)
    except Exception as e:
        raise OperationError(f"{where}: fn(a, b, p) raised {type(e).__name__}: {e}") from e
    out = np.asarray(out)
    if out.shape != (p * p,):
        raise OperationError(
            f"{where}: fn(a, b, p) returned shape {out.shape}; expected one label per pair, ({p * p},)"
        )
    if out.dtype.kind not in "iu":
        raise OperationError(
            f"{where}: fn(a, b, p) returned dtype {out.dtype}; expected integer labels (reduce with % p)"
        )
    if out.size and (out.min() < 0 or out.max() >= p):
        raise OperationError(
            f"{where}: fn(a, b, p) returned labels in [{out.min()}, {out.max()}]; expected [0, {p}) "
            "(reduce with % p)"
        )
    return out.astype(np.int32)


def labels(name: str, p: int) -> np.ndarray:
    """The labels of operation ``name`` on Z_p over all p² pairs: int32 (p²,), row i the pair
    a = i // p, b = i % p (the order of :func:`phasespace.tasks.all_pairs`), values in [0, p).

    Every call checks the function's output (shape, integer dtype, range).

    Raises:
        OperationError: unknown ``name``, or invalid labels (naming the operation, p and the fault).
        ValueError: if p is not in [2, :data:`MAX_P`).
    """
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 2 <= p < MAX_P:
        raise ValueError(f"p={p!r}: must be an integer in [2, {MAX_P})")
    return _checked(get(name), int(p))


def register_operation(name: str, fn: OperationFn, description: str = "", replace: bool = False) -> None:
    """Register an operation ``name``: labels ``fn(a, b, p)`` for int64 arrays a, b (N,) with
    values in [0, p); it must return integer labels (N,) in [0, p). Checked now at p =
    :data:`CHECK_P` and again at each use (:func:`labels`).

    Example::

        import phasespace
        phasespace.register_operation("a_plus_2b", lambda a, b, p: (a + 2 * b) % p,
                                      description="(a + 2b) mod p")

    Raises:
        OperationError: ``name`` is not an identifier ([A-Za-z_][A-Za-z0-9_]*), is a built-in
            operation, or is already registered (unless ``replace``); ``fn`` is not callable or
            its labels are invalid at p = :data:`CHECK_P`.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise OperationError(f"operation name {name!r}: must match [A-Za-z_][A-Za-z0-9_]*")
    if name in BUILTIN:
        raise OperationError(f"operation name {name!r}: a built-in operation cannot be replaced")
    if name in _REGISTRY and not replace:
        raise OperationError(f"operation name {name!r}: already registered (pass replace=True)")
    if not callable(fn):
        raise OperationError(f"operation {name!r}: fn={fn!r} is not callable")
    op = Operation(name, fn, str(description), False)
    _checked(op, CHECK_P)
    _REGISTRY[name] = op


def unregister_operation(name: str) -> None:
    """Remove a registered (not built-in) operation.

    Raises:
        OperationError: if ``name`` is built in or not registered.
    """
    if name in BUILTIN or name not in _REGISTRY:
        raise OperationError(f"operation {name!r}: not a registered (non-built-in) operation")
    del _REGISTRY[name]
