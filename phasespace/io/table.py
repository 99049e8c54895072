"""The runs table's schema: one fixed type per column of ``runs.csv``, defined once.

Every column has one of four types (:data:`DTYPES`): ``int64``, ``float64``, ``bool`` or ``str``.
A missing value is NaN in a ``float64`` column and the empty string in a ``str`` column; ``int64``
and ``bool`` columns have no missing values (a quantity that can be missing, such as a step that
never happened, is ``float64``). The writer (:func:`phasespace.io.store.write_csv`) formats each
value by its column's type with round-trip precision, the reader
(:func:`phasespace.io.store.read_runs`) parses by the schema, not by inference, so a column's type
does not depend on its values (``attention_rate`` is float64 even when every value is 0 or 1).

The names are listed here rather than imported from the code that produces them (the sweep, the
analysis), so that reading a table needs neither; ``tests/test_sweep.py`` checks that every
column the producers write has an entry.
"""

from __future__ import annotations

import re

from phasespace.spec.networks import BOOL_AXES, FLOAT_AXES, INT_AXES
from phasespace.spec.parse import AXES

DTYPES = ("int64", "float64", "bool", "str")
"""The column types."""


def _axis_dtype(name: str) -> str:
    if name in INT_AXES:
        return "int64"
    if name in FLOAT_AXES:
        return "float64"
    if name in BOOL_AXES:
        return "bool"
    return "str"  # model, act, operation


RUNS_SCHEMA: dict[str, str] = {
    # identity
    "index": "int64",
    "bucket": "str",
    "run": "str",  # tables of reference checkpoints (``phasespace analyze <folder>``)
    # every sweep axis (``data_seed`` resolved: the split seed actually used)
    **{a: _axis_dtype(a) for a in AXES},
    # final metrics (SPEC §5.1–5.3, §5.6)
    "train_loss": "float64",
    "test_loss": "float64",
    "train_accuracy": "float64",
    "test_accuracy": "float64",
    "loss": "float64",
    "accuracy": "float64",
    "gradient_symmetricity": "float64",
    "gradient_symmetricity_zero_grads": "int64",
    "distance_irrelevance": "float64",
    "distance_irrelevance_largest_wrong": "float64",
    "circularity": "float64",
    "circular": "bool",
    "param_norm": "float64",
    # the run record (:func:`phasespace.training.step.run_record`)
    "best_train_accuracy": "float64",
    "best_test_accuracy": "float64",
    "best_train_loss": "float64",
    "best_test_loss": "float64",
    "first_solved_train_step": "float64",
    "first_solved_test_step": "float64",
    "first_full_train_step": "float64",
    "first_full_test_step": "float64",
    "generalization_gap": "float64",
    "generalization_delay1": "float64",
    "generalization_delay2": "float64",
    "collapsed": "bool",
    "nonfinite_step": "float64",
    "stopped_step": "float64",
    "steps": "int64",
    # bookkeeping
    "degenerate": "str",
    "precision": "str",
    "compute": "str",
    # circuits (:func:`phasespace.analysis.circuits.analyze_full`)
    "n_circles": "int64",
    "circles_accuracy": "float64",
    "circularity_b": "float64",
    "algorithm": "str",
    "algorithm_code": "int64",
}
"""Column → type of every fixed column of ``runs.csv`` (the per-circle columns are matched by
:data:`RUNS_PATTERNS`)."""

CIRCLE_FIELDS = (
    "k",
    "delta",
    "components",
    "accompanies",
    "accuracy",
    "fve_clock",
    "fve_pizza",
    "fve_accompanying",
)
"""The per-circle fields, columns ``circle{i}_{field}`` (i = 1, 2, …)."""

RUNS_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"circle[1-9][0-9]*_({'|'.join(CIRCLE_FIELDS)})"), "float64"),
)
"""Column-name patterns → type (NaN in the integer-valued circle fields for an empty slot)."""


def column_dtype(name: str) -> str | None:
    """The type of runs-table column ``name`` (one of :data:`DTYPES`), or None if the schema has
    no such column."""
    if name in RUNS_SCHEMA:
        return RUNS_SCHEMA[name]
    for pattern, dtype in RUNS_PATTERNS:
        if pattern.fullmatch(name):
            return dtype
    return None
