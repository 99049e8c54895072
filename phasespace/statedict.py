"""Checking a reference ``state_dict`` (key → array) against the shapes a model expects."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A reference checkpoint whose keys or shapes do not match its configuration."""


def check_state_shapes(
    state: Mapping[str, Any],
    expected: Mapping[str, tuple[int, ...]],
    what: object,
    ignored: Collection[str] = (),
) -> None:
    """Every expected key present with its shape, and no other key (besides ``ignored``).

    Raises:
        CheckpointError: naming the key, the expected and the found shape (missing key or shape
            mismatch), or the unexpected keys and ``what`` they are not part of.
    """
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"missing key {key!r}: expected shape {shape}, found none")
        found = tuple(np.shape(state[key]))
        if found != shape:
            raise CheckpointError(f"key {key!r}: expected shape {shape}, found {found}")
    extra = sorted(set(state) - set(expected) - set(ignored))
    if extra:
        raise CheckpointError(f"unexpected keys {extra}: not part of {what}")
