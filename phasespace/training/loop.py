"""Training a whole population: the chunk loop over one compiled program per bucket, sharded
over every device in groups that fit device memory (:mod:`phasespace.training.program`,
:mod:`phasespace.training.memory`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from phasespace.population.stack import Population
from phasespace.spec.networks import Recipe
from phasespace.training.memory import plan_training
from phasespace.training.program import train_sharded
from phasespace.training.step import TrainState


def train_population(
    pop: Population,
    recipe: Recipe,
    chunk_steps: int = 500,
    state: TrainState | None = None,
    on_chunk: Callable[[TrainState, dict[str, np.ndarray]], None] | None = None,
    layout: Any = None,
) -> tuple[TrainState, dict[str, np.ndarray]]:
    """Train every network of ``pop`` for ``recipe.steps`` steps in chunks of ``chunk_steps``.

    The run axis is sharded over every device (across processes in a ``jax.distributed`` run)
    and split into groups and host chunks that fit device memory (:mod:`phasespace.training.program`,
    :mod:`phasespace.training.memory`).

    Args:
        pop: the population (run axis R).
        recipe: static recipe.
        chunk_steps: optimizer steps per compiled call (the host syncs only between chunks).
        state: a state to continue from (its ``step`` must be equal across the population);
            default: fresh.
        on_chunk: called after each chunk with the state and that chunk's history (host arrays
            of shape (R, K)), e.g. for a progress bar or a checkpoint.
        layout: a :class:`phasespace.training.placement.Layout`; default: planned by
            :func:`phasespace.training.memory.plan_training` over all devices.

    Returns:
        ``(state, history)``: the final state (leaves (R, ...)) and, for each of
        :data:`HISTORY_FIELDS`, a float32 NumPy array (R, steps run in this call).

    Raises:
        phasespace.training.memory.DeviceMemoryError: if one network per device does not fit.
        ValueError: if ``recipe`` has minibatches and ``pop`` lacks their data order (build it
            with ``build_population(..., recipe)``).
    """

    if chunk_steps <= 0:
        raise ValueError(f"chunk_steps={chunk_steps}: must be a positive number of steps")
    if recipe.batch_size is not None:
        need = "data_seed" if recipe.shuffle else "data_rank"
        if need not in pop.hparams:
            raise ValueError(
                f"recipe.batch_size={recipe.batch_size}: the population has no minibatch order "
                f"(hparams[{need!r}]); build it with build_population(arch, networks, recipe)"
            )
    if layout is None:
        layout = plan_training(pop.arch, recipe, pop.size, chunk_steps).layout
    return train_sharded(pop.arch, pop.params, pop.hparams, recipe, layout, chunk_steps, state, on_chunk)
