"""Final parameters of a sweep's buckets, saved beside its table so ``phasespace analyze`` can
recompute every metric later without retraining.

One file per bucket, ``<sweep>/params/<bucket key>.npz`` (written atomically), holding:

* ``param:<path>`` — each parameter leaf with its run axis, (R, ...) float32, at the bucket width
  (``<path>`` is the '/'-joined Flax path, e.g. ``param:params/blocks_0/W_Q``);
* ``index`` (R,) int64 — each network's row in ``runs.csv``;
* ``hp:attention_rate``, ``hp:attn_scale`` (R,) float32, ``hp:train_mask`` (R, p²) bool and
  ``hp:labels`` (R, p²) int32 (each network's operation) — the per-network data the analysis
  needs (files written before the ``operation`` axis have no ``hp:labels``: their networks were
  all trained on addition, and :func:`load_bucket_params` gives them its labels);
* ``arch`` — the bucket architecture as JSON (:func:`phasespace.models.registry.arch_to_dict`).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from phasespace.io import store
from phasespace.models.registry import Arch, arch_from_dict, arch_to_dict
from phasespace.operations import ADDITION
from phasespace.tasks import operation_labels

PARAMS_DIR = "params"
HP_FIELDS = ("attention_rate", "attn_scale", "train_mask", "labels")


class BucketParams(NamedTuple):
    """A bucket's saved final state: ``key``, ``arch``, ``index`` (R,), ``params`` (leaves
    (R, ...)) and ``hparams`` (:data:`HP_FIELDS`, leading axis R)."""

    key: str
    arch: Arch
    index: np.ndarray
    params: Any
    hparams: dict[str, np.ndarray]


def save_bucket_params(
    sweep_dir: str,
    key: str,
    arch: Arch,
    index: Sequence[int],
    params: Any,
    hparams: Mapping[str, Any],
) -> str:
    """Write one bucket's final parameters (see the module docstring); returns the path."""
    arrays: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        arrays[f"param:{name}"] = np.asarray(leaf)
    arrays["index"] = np.asarray(index, np.int64)
    for k in HP_FIELDS:
        arrays[f"hp:{k}"] = np.asarray(hparams[k])
    arrays["arch"] = np.asarray(json.dumps(arch_to_dict(arch), sort_keys=True))
    path = os.path.join(sweep_dir, PARAMS_DIR, f"{key}.npz")
    store.write_npz(path, arrays)
    return path


def load_bucket_params(path: str) -> BucketParams:
    """Read a file written by :func:`save_bucket_params`.

    Raises:
        FileNotFoundError: if ``path`` is missing; ValueError naming the file if it is truncated
            or corrupt; KeyError naming a missing field.
    """
    files = store.read_npz(path, "params file")
    for need in ("index", "arch"):
        if need not in files:
            raise KeyError(f"{path}: field {need!r} missing; not a phasespace params file")
    params: dict[str, Any] = {}
    for name, arr in files.items():
        if not name.startswith("param:"):
            continue
        node = params
        parts = name[len("param:") :].split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = arr
    arch = arch_from_dict(json.loads(str(files["arch"])))
    if "hp:labels" not in files:  # written before the operation axis: every network is addition
        n = len(files["index"])
        files["hp:labels"] = np.tile(operation_labels(ADDITION, arch.p), (n, 1))
    hparams = {k: files[f"hp:{k}"] for k in HP_FIELDS}
    key = os.path.splitext(os.path.basename(path))[0]
    return BucketParams(key, arch, files["index"], params, hparams)


def list_bucket_params(sweep_dir: str) -> list[str]:
    """Paths of the saved bucket parameter files of a sweep (sorted)."""
    return sorted(glob.glob(os.path.join(sweep_dir, PARAMS_DIR, "*.npz")))
