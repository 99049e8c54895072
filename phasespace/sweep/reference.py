"""Evaluating the paper's released reference checkpoints with the engine's metric code."""

from __future__ import annotations

import glob
import os
from typing import Any

import jax

from phasespace.analysis.network import analyze_population
from phasespace.io import store
from phasespace.io.reference import load_reference_transformer, read_reference_config
from phasespace.population.stack import attn_scale
from phasespace.tasks import train_mask


def evaluate_reference(npz_path: str) -> dict[str, Any]:
    """All metrics of one reference transformer checkpoint (SPEC §7).

    The network is analysed as a population of one through :func:`analyze_population`, so the
    numbers come from exactly the code that analyses sweeps. Train/test figures use a split
    drawn from seed 0 (the released checkpoints do not record theirs); ``accuracy`` is over all
    p² pairs.

    Returns:
        dict: ``run``, ``attention_rate``, ``d_model``, ``n_layers``, ``act``, ``diff_vocab``,
        ``eqn_sign`` and every metric of :func:`~phasespace.analysis.network.analyze_network`.
    """
    arch, params, cfg = load_reference_transformer(npz_path)
    alpha = float(cfg.get("attn_coeff", 1.0))
    stacked = jax.tree_util.tree_map(lambda x: x[None], params)
    mask = train_mask(arch.p, float(cfg.get("frac", 0.8)), 0)[None]
    m = analyze_population(arch, stacked, [alpha], [attn_scale(arch.d_model, arch.n_heads)], mask)
    row: dict[str, Any] = {
        "run": os.path.splitext(os.path.basename(npz_path))[0],
        "attention_rate": alpha,
        "d_model": arch.d_model,
        "n_layers": arch.n_layers,
        "act": arch.act,
        "diff_vocab": arch.diff_vocab,
        "eqn_sign": arch.eqn_sign,
    }
    row.update({k: float(v[0]) if v.dtype.kind == "f" else int(v[0]) for k, v in m.items()})
    return row


def evaluate_reference_dir(folder: str, out_csv: str | None = None) -> list[dict[str, Any]]:
    """:func:`evaluate_reference` for every transformer checkpoint in ``folder`` (MLP-model
    checkpoints, whose config has ``model_type``, are skipped here).

    Raises:
        FileNotFoundError: if ``folder`` holds no ``*.npz``.
    """
    paths = sorted(glob.glob(os.path.join(folder, "*.npz")))
    if not paths:
        raise FileNotFoundError(f"{folder}: no reference checkpoints (*.npz)")
    rows = []
    for p in paths:
        cfg = read_reference_config(os.path.splitext(p)[0] + ".json")
        if cfg.get("model_type"):
            continue
        rows.append(evaluate_reference(p))
    if out_csv:
        store.write_csv(out_csv, list(rows[0]), rows)
    return rows
