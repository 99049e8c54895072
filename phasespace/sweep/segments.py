"""Run segments: every run of ``phasespace run`` on a sweep directory (the first one, each resume
after a kill, a re-run of a finished sweep) is recorded in ``environment.json`` under
``"segments"``, with the backend, devices and process count it ran on and the step each bucket
started from.

The top-level record stays the first run's (versions, devices, date); its timings
(``wall_seconds``, ``network_steps_per_second``, …) are those of the last run that trained
something, so a re-run of a finished sweep keeps the original throughput and adds its own segment
beside it. A resume on a machine where the numbers can differ from an uninterrupted run — another
backend or device kind, other versions of JAX, or another device or process count where the
layout changes the compiled program (accelerators, multi-process runs) — warns. On a CPU in one
process the device count does not change the numbers
(:func:`phasespace.training.placement.per_device_programs`).
"""

from __future__ import annotations

import datetime
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

ENVIRONMENT_FILE = "environment.json"
SEGMENT_FIELDS = ("backend", "device_kind", "devices", "process_count", "versions")


class ResumeEnvironmentWarning(UserWarning):
    """A sweep resumes on a machine where its results can differ from an uninterrupted run."""


def segment(env: Mapping[str, Any]) -> dict[str, Any]:
    """This run's segment, from its :func:`phasespace.sweep.run.environment` record."""
    versions = env.get("versions") or {}
    return {
        "backend": env.get("backend"),
        "device_kind": env.get("device_kind"),
        "devices": list(env.get("devices") or []),
        "process_count": env.get("process_count"),
        "versions": {k: versions.get(k) for k in ("phasespace", "jax", "jaxlib")},
        "started_at": env.get("date") or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "started_at_step": {},
        "completed": False,
    }


def _load(out_dir: str) -> dict[str, Any] | None:
    path = os.path.join(out_dir, ENVIRONMENT_FILE)
    try:
        with open(path) as f:
            env = json.load(f)
    except (OSError, ValueError):
        return None
    return env if isinstance(env, dict) else None


def _first_segment(env: Mapping[str, Any]) -> dict[str, Any]:
    """The segment of a record written before segments existed (or by a killed first run)."""
    seg = segment(env)
    seg["completed"] = "wall_seconds" in env
    return seg


def differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two segments in a way that can change the numbers (empty: none).

    On a CPU in one process the device count is free; elsewhere (accelerators, several processes)
    the device and process counts change the compiled program, so they count too.
    """
    out = []
    for key in ("backend", "device_kind"):
        if before.get(key) != now.get(key):
            out.append(f"{key} {before.get(key)!r} → {now.get(key)!r}")
    for pkg in ("jax", "jaxlib"):
        a, b = (before.get("versions") or {}).get(pkg), (now.get("versions") or {}).get(pkg)
        if a != b:
            out.append(f"{pkg} {a} → {b}")
    if before.get("process_count") != now.get("process_count"):
        out.append(f"process_count {before.get('process_count')} → {now.get('process_count')}")
    elif now.get("backend") != "cpu" or now.get("process_count", 1) > 1:
        n0, n1 = len(before.get("devices") or []), len(now.get("devices") or [])
        if n0 != n1:
            out.append(f"devices {n0} → {n1}")
    return out


def begin(out_dir: str, env: dict[str, Any], resuming: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record to write at the start of a run, and this run's segment (in it).

    Args:
        out_dir: the sweep directory.
        env: this run's environment record.
        resuming: ``out_dir`` already holds (part of) this sweep.

    Returns:
        ``(record, segment)``: when resuming, the stored record (the first run's) with this run's
        segment appended; else ``env`` with ``segments = [segment]``. A warning
        (:class:`ResumeEnvironmentWarning`) is issued when the previous segment ran where results
        can differ.
    """
    seg = segment(env)
    stored = _load(out_dir) if resuming else None
    if stored is None:
        record = dict(env)
        record["segments"] = [seg]
        return record, seg
    segments = stored.get("segments")
    if not isinstance(segments, list) or not segments:
        segments = [_first_segment(stored)]
    diff = differences(segments[-1], seg)
    if diff:
        warnings.warn(
            f"{out_dir}: resuming on another machine setup ({'; '.join(diff)}): the results can differ "
            "from an uninterrupted run at float32 rounding (each run segment is recorded in "
            f"{ENVIRONMENT_FILE})",
            ResumeEnvironmentWarning,
            stacklevel=2,
        )
    record = dict(stored)
    record["segments"] = [*segments, seg]
    record["padding"] = env.get("padding", stored.get("padding"))
    return record, seg


def finish(
    record: dict[str, Any], seg: dict[str, Any], timings: Mapping[str, Any], started: Mapping[str, int]
) -> dict[str, Any]:
    """Complete this run's segment with its timings (all but ``buckets``; each trained bucket's
    layout under ``layouts``) and the step each bucket started from; the record's top-level
    timings become this run's if it trained anything (or none were recorded yet)."""
    seg.update({k: v for k, v in timings.items() if k != "buckets"})
    seg["layouts"] = {b["key"]: b["layout"] for b in timings.get("buckets", []) if b.get("layout")}
    seg["started_at_step"] = dict(started)
    seg["completed"] = True
    if timings.get("network_steps_this_run") or "wall_seconds" not in record:
        record.update(timings)
    return record
