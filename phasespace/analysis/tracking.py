"""Circuit metrics along training: every metric of :func:`phasespace.analysis.circuits.analyze_full`,
recorded every N optimizer steps at chunk boundaries, to show when circuits form.

The training loop calls :meth:`MetricsRecorder.on_chunk` after each chunk (the host touches the
state only there); the sweep makes the chunk length divide N (``gcd(chunk_steps, N)``) so every
multiple of N is a chunk boundary.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from phasespace.analysis.circuits import analyze_full
from phasespace.models.registry import Arch

_CIRCLE_COLUMN = re.compile(r"circle\d+_")


def aligned_chunk(chunk_steps: int, every: int) -> int:
    """Chunk length whose boundaries include every multiple of ``every`` (gcd; ``chunk_steps``
    when ``every`` is 0)."""
    return math.gcd(chunk_steps, every) if every > 0 else chunk_steps


class MetricsRecorder:
    """Accumulates :func:`~phasespace.analysis.circuits.analyze_full` of a population at steps
    0, N, 2N, … (and any step passed to :meth:`record`).

    Args:
        arch: the bucket architecture.
        hparams: the population's per-network data (``attention_rate``, ``attn_scale``,
            ``train_mask`` with leading axis R).
        analysis: the spec's ``[analysis]`` options.
        every: N, steps between records (> 0).
    """

    def __init__(self, arch: Arch, hparams: Mapping[str, Any], analysis: Mapping[str, Any], every: int):
        if every <= 0:
            raise ValueError(f"every={every}: must be a positive number of steps")
        self.arch = arch
        self.hparams = hparams
        self.analysis = dict(analysis)
        self.every = every
        self.steps: list[int] = []
        self._records: list[dict[str, np.ndarray]] = []
        self.last: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None

    def record(self, step: int, params: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Analyse ``params`` (leaves (R, ...)) as the state at optimizer step ``step``."""
        scalars, arrays = analyze_full(self.arch, params, self.hparams, self.analysis)
        rec = {
            k: v.astype(np.int8) if v.dtype == bool else v
            for k, v in scalars.items()
            if v.dtype.kind in "biuf" and not _CIRCLE_COLUMN.match(k)  # those are in ``arrays``
        }
        rec.update(arrays)
        self.steps.append(int(step))
        self._records.append(rec)
        self.last = (scalars, arrays)
        return scalars, arrays

    def on_chunk(self, state: Any, history: Any = None) -> None:
        """Training-loop callback: record when the state's step is a multiple of N."""
        step = int(np.asarray(state.step).reshape(-1)[0])
        if step % self.every == 0 and (not self.steps or self.steps[-1] != step):
            self.record(step, state.params)

    def restore(self, saved: Mapping[str, np.ndarray]) -> None:
        """Replace the records by those of a saved :meth:`result` (resume after a kill)."""
        steps = [int(x) for x in np.asarray(saved.get("step", []))]
        names = [k for k in saved if k != "step"]
        self.steps = steps
        self._records = [{k: np.asarray(saved[k])[:, t] for k in names} for t in range(len(steps))]
        self.last = None

    def result(self) -> dict[str, np.ndarray]:
        """``step`` int64 (T,) and each numeric metric stacked as (R, T, ...)."""
        out: dict[str, np.ndarray] = {"step": np.asarray(self.steps, np.int64)}
        if not self._records:
            return out
        for k in self._records[0]:
            out[k] = np.stack([r[k] for r in self._records], axis=1)
        return out
