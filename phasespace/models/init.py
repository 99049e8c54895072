"""Initialisers and padding shared by the model families (SPEC §2–§3).

* :func:`normal` is the reference code's N(0, 1)/√divisor initialiser;
* :class:`TaskShape` gives every architecture its task, vocabulary, context length and
  ``with_width`` from ``p``, ``diff_vocab``, ``eqn_sign`` and ``d_model``;
* :func:`fit` slices or zero-pads an array's trailing axes, the one primitive behind every
  family's ``resize_params`` (width buckets: a network of true width d lives zero-padded in a
  bucket of width D ≥ d).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Self

import jax
import jax.numpy as jnp
import numpy as np

from phasespace.tasks import Task


class TaskShape:
    """Mixin of the frozen architecture dataclasses (fields or properties ``p``, ``d_model``,
    ``diff_vocab``, ``eqn_sign``): the task they learn and its token shapes (SPEC §1)."""

    p: int
    d_model: int
    diff_vocab: bool
    eqn_sign: bool

    @property
    def task(self) -> Task:
        return Task(self.p, self.diff_vocab, self.eqn_sign)

    @property
    def vocab(self) -> int:
        """Vocabulary size V, also the number of logits (SPEC §1)."""
        return self.task.vocab

    @property
    def n_ctx(self) -> int:
        """Input tokens: 2, or 3 with the equals token."""
        return self.task.n_ctx

    def with_width(self, d_model: int) -> Self:
        """The same architecture at width ``d_model``."""
        return dataclasses.replace(self, d_model=d_model)  # type: ignore[type-var]


def normal(divisor: float) -> Callable[..., jax.Array]:
    """Initialiser drawing N(0, 1)/√``divisor`` (float32 by default), as the reference code's
    ``torch.randn(shape) / sqrt(divisor)`` (SPEC §2)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.normal(key, shape, dtype) / math.sqrt(divisor)

    return init


def fit(x: Any, sizes: Mapping[int, int]) -> Any:
    """Slice or zero-pad trailing axes of ``x`` to new lengths.

    Args:
        x: a NumPy or JAX array, any leading axes (e.g. the run axis).
        sizes: negative axis → new length (e.g. ``{-1: 64}``); other axes are kept.

    Returns:
        An array of the same kind (NumPy in, NumPy out) whose axis ``a`` has length
        ``sizes[a]``: the first entries of ``x`` followed by zeros.
    """
    x = x[tuple(slice(None) if a not in sizes else slice(0, sizes[a]) for a in range(-x.ndim, 0))]
    widths = [(0, 0)] * x.ndim
    for a, n in sizes.items():
        widths[x.ndim + a] = (0, n - x.shape[a])
    return jnp.pad(x, widths) if isinstance(x, jax.Array) else np.pad(x, widths)
