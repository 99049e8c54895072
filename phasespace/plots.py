"""Figures drawn with matplotlib (Agg backend), written atomically as PNG."""

from __future__ import annotations

import io
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from phasespace.store import write_bytes


def save_figure(fig: plt.Figure, path: str, dpi: int = 120) -> None:
    """Render ``fig`` to PNG and write it atomically; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def plot_metrics_vs_attention_rate(
    runs: Mapping[str, np.ndarray], path: str, title: str = "", circular_threshold: float = 0.995
) -> None:
    """Two panels against the attention rate α: gradient symmetricity and distance irrelevance
    (correct logit and largest-wrong variant). Each network is a point (filled if circular,
    i.e. circularity ≥ ``circular_threshold``); the line is the mean per α.

    Args:
        runs: runs-table columns (R,): ``attention_rate``, ``gradient_symmetricity``,
            ``distance_irrelevance``, ``distance_irrelevance_largest_wrong``, ``circularity``.
        path: output PNG path.
    """
    alpha = np.asarray(runs["attention_rate"], dtype=float)
    circ = np.asarray(runs.get("circularity", np.ones_like(alpha)), dtype=float) >= circular_threshold
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = [
        ("gradient_symmetricity", "gradient symmetricity", [("gradient_symmetricity", "C0")]),
        (
            "distance_irrelevance",
            "distance irrelevance",
            [("distance_irrelevance", "C1"), ("distance_irrelevance_largest_wrong", "C2")],
        ),
    ]
    levels = np.unique(alpha)
    for ax, (_, ylabel, series) in zip(axes, panels, strict=True):
        for key, color in series:
            if key not in runs:
                continue
            y = np.asarray(runs[key], dtype=float)
            label = key.replace("_", " ")
            ax.scatter(alpha[circ], y[circ], s=18, color=color, alpha=0.8, label=f"{label} (circular)")
            ax.scatter(
                alpha[~circ],
                y[~circ],
                s=18,
                facecolors="none",
                edgecolors=color,
                alpha=0.8,
                label=f"{label} (not circular)",
            )
            if len(levels) <= 50:
                means = [
                    np.nanmean(y[alpha == a]) if np.any(np.isfinite(y[alpha == a])) else np.nan
                    for a in levels
                ]
                ax.plot(levels, means, color=color, lw=1.5)
        ax.set_xlabel("attention rate α")
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].axhline(0.98, color="gray", ls=":", lw=1)
    axes[1].axhline(0.6, color="gray", ls=":", lw=1)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
