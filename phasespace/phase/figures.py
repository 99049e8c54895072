"""Figures drawn with matplotlib (Agg backend), written atomically as PNG."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from phasespace.analysis import classify
from phasespace.defaults import (
    CIRCULAR_THRESHOLD,
    DISTANCE_IRRELEVANCE_THRESHOLD,
    GRADIENT_SYMMETRICITY_THRESHOLD,
)
from phasespace.io.store import write_bytes
from phasespace.phase.diagram import FAMILY_AXES, bin_index, bin_label, family_index, family_slugs


def save_figure(fig: plt.Figure, path: str, dpi: int = 120) -> None:
    """Render ``fig`` to PNG and write it atomically; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def draw_safely(path: str, plot: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """Call ``plot(*args, path=path, **kwargs)``; if it raises, warn naming the figure (no file
    is written, the figure is closed) and return False, so one failing figure never stops the
    other figures or files of a sweep."""
    before = set(plt.get_fignums())
    try:
        plot(*args, path=path, **kwargs)
        return True
    except Exception as e:  # a figure is never worth the other results
        for num in set(plt.get_fignums()) - before:
            plt.close(num)
        warnings.warn(
            f"figure {os.path.basename(path)} not written: {type(e).__name__}: {e}",
            RuntimeWarning,
            stacklevel=2,
        )
        return False


def plot_metrics_vs_attention_rate(
    runs: Mapping[str, np.ndarray],
    path: str,
    title: str = "",
    thresholds: Mapping[str, float] | None = None,
) -> None:
    """Two panels against the attention rate α: gradient symmetricity and distance irrelevance
    (correct logit and largest-wrong variant). Each network is a point (filled if circular,
    i.e. circularity ≥ ``circular_threshold``); the line is the mean per α; the label
    thresholds are dotted lines.

    Args:
        runs: runs-table columns (R,): ``attention_rate``, ``gradient_symmetricity``,
            ``distance_irrelevance``, ``distance_irrelevance_largest_wrong``, ``circularity``.
        path: output PNG path.
        thresholds: the label thresholds (:func:`phasespace.analysis.classify.thresholds`).
    """
    th = classify.thresholds(thresholds)
    alpha = np.asarray(runs["attention_rate"], dtype=float)
    circ = classify.circular_mask(runs.get("circularity", np.ones_like(alpha)), th["circular_threshold"])
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
    axes[0].axhline(th["gradient_symmetricity_threshold"], color="gray", ls=":", lw=1)
    axes[1].axhline(th["distance_irrelevance_threshold"], color="gray", ls=":", lw=1)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


_NAME = {
    "gradient_symmetricity": "gradient symmetricity",
    "distance_irrelevance": "distance irrelevance",
    "distance_irrelevance_largest_wrong": "distance irrelevance (largest wrong)",
    "circularity": "circularity",
}


def plot_alpha_panels(
    runs: Mapping[str, np.ndarray],
    path: str,
    select: np.ndarray | None = None,
    irrelevance_key: str = "distance_irrelevance_largest_wrong",
    gradient_symmetricity_threshold: float = GRADIENT_SYMMETRICITY_THRESHOLD,
    distance_irrelevance_threshold: float = DISTANCE_IRRELEVANCE_THRESHOLD,
    title: str = "",
) -> None:
    """The paper's fixed-width panels: (α, distance irrelevance) coloured by gradient
    symmetricity, and (α, gradient symmetricity) coloured by distance irrelevance.

    Args:
        runs: runs-table columns (R,): ``attention_rate``, ``gradient_symmetricity`` and
            ``irrelevance_key``.
        path: output PNG path.
        select: bool (R,), the networks drawn (e.g. one width bin, circular only); default all.
        irrelevance_key: which distance-irrelevance variant (SPEC §5.2); the published figures
            and tables use the largest-wrong variant.
        gradient_symmetricity_threshold, distance_irrelevance_threshold: drawn as dotted lines
            (SPEC §5.7).
    """
    alpha = np.asarray(runs["attention_rate"], dtype=float)
    gs = np.asarray(runs["gradient_symmetricity"], dtype=float)
    di = np.asarray(runs[irrelevance_key], dtype=float)
    sel = np.ones(alpha.shape, bool) if select is None else np.asarray(select, bool)
    sel = sel & np.isfinite(alpha) & np.isfinite(gs) & np.isfinite(di)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    sym_line, dist_line = gradient_symmetricity_threshold, distance_irrelevance_threshold
    panels = [
        (di, gs, _NAME[irrelevance_key], "gradient symmetricity", "viridis", dist_line),
        (gs, di, "gradient symmetricity", _NAME[irrelevance_key], "viridis_r", sym_line),
    ]
    for ax, (y, c, ylabel, clabel, cmap, th) in zip(axes, panels, strict=True):
        sc = ax.scatter(alpha[sel], y[sel], c=c[sel], cmap=cmap, s=10, alpha=0.85, linewidths=0)
        fig.colorbar(sc, ax=ax, label=clabel)
        ax.axhline(th, color="gray", ls=":", lw=1)
        ax.set_xlabel("attention rate α")
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} ({int(sel.sum())} networks)" if title else f"{int(sel.sum())} networks")
    save_figure(fig, path)


def plot_phase_width(
    runs: Mapping[str, np.ndarray],
    arrays: Mapping[str, np.ndarray],
    path: str,
    subset: str = "circular",
    metrics: tuple[str, ...] = ("gradient_symmetricity", "distance_irrelevance_largest_wrong"),
    circular_threshold: float = CIRCULAR_THRESHOLD,
    title: str = "",
    family: int = 0,
    select: np.ndarray | None = None,
) -> None:
    """Phase diagram over (attention rate, width): each network a point at (α, d_model) on a
    log-width axis, coloured by a metric (one panel per metric), with the fitted transition
    α*(width) of the metric's label (SPEC §6) per width bin (± standard error).

    Args:
        runs: runs-table columns (R,): ``attention_rate``, ``d_model``, ``circularity`` and
            ``metrics``.
        arrays: :func:`phasespace.phase.diagram.phase_arrays` of the same networks (for α* and the bins).
        path: output PNG path.
        subset: ``"all"`` or ``"circular"`` (networks drawn, and whose α* is drawn).
        metrics: metrics to colour by; those absent from ``runs`` are left out.
        family: the family (index along ``arrays``' ``family`` dimension) whose α* is drawn.
        select: bool (R,), that family's networks (default all).
    """
    alpha = np.asarray(runs["attention_rate"], dtype=float)
    width = np.asarray(runs["d_model"], dtype=float)
    circ = classify.circular_mask(runs["circularity"], circular_threshold)
    sel = circ if subset == "circular" else np.ones(alpha.shape, bool)
    if select is not None:
        sel = sel & np.asarray(select, bool)
    metrics = tuple(m for m in metrics if m in runs)
    w_edges = np.asarray(arrays["edges__d_model_bin"], dtype=float)
    w_coord = np.asarray(arrays["coord__d_model_bin"], dtype=float)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.4), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        v = np.asarray(runs[m], dtype=float)
        ok = sel & np.isfinite(v)
        cmap = "viridis" if m == "gradient_symmetricity" else "viridis_r"
        sc = ax.scatter(alpha[ok], width[ok], c=v[ok], cmap=cmap, s=10, alpha=0.85, linewidths=0)
        fig.colorbar(sc, ax=ax, label=_NAME.get(m, m))
        label = classify.LABEL_OF_METRIC.get(m)
        key = f"transition__{subset}__{label}"
        if label and f"{key}__alpha_star" in arrays:
            a_star = np.asarray(arrays[f"{key}__alpha_star"], dtype=float)[family]
            se = np.asarray(arrays[f"{key}__se"], dtype=float)[family]
            good = np.isfinite(a_star) & (a_star >= -0.5) & (a_star <= 1.5)
            ax.errorbar(
                a_star[good],
                w_coord[good],
                xerr=np.where(np.isfinite(se[good]), se[good], 0.0),
                color="red",
                marker="o",
                ms=5,
                lw=1.5,
                capsize=3,
                label="α* (logistic fit per width bin)",
            )
            ax.legend(fontsize=7, loc="lower right")
        for e in w_edges:
            ax.axhline(e, color="gray", lw=0.5, alpha=0.4)
        ax.set_yscale("log", base=2)
        ax.set_yticks(w_edges, [f"{e:.4g}" for e in w_edges])
        ax.minorticks_off()
        lo, hi = w_edges[0], w_edges[-1]
        ax.set_ylim(lo / 1.05, hi * 1.05 if hi > lo else lo * 1.1)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("attention rate α")
        ax.set_ylabel("width d_model")
        ax.set_title(_NAME.get(m, m), fontsize=10)
    n = int(sel.sum())
    fig.suptitle(f"{title} ({n} {subset} networks)" if title else f"{n} {subset} networks")
    save_figure(fig, path)


def phase_figures(
    runs: Mapping[str, np.ndarray],
    arrays: Mapping[str, np.ndarray],
    fig_dir: str,
    thresholds: Mapping[str, float] | None = None,
    title: str = "",
) -> list[str]:
    """All phase-diagram figures of a sweep (or a published table) into ``fig_dir``, per family
    of ``arrays`` (file names get a ``_<family>`` suffix, e.g. ``_model-mlp_alpha``, when there
    are several families).

    * ``alpha_panels_d<lo>-<hi>_<subset>.png``: :func:`plot_alpha_panels` per width bin, for all
      and for circular networks, when the bin holds networks with a finite α and metrics;
    * ``phase_width_<subset>.png``: :func:`plot_phase_width`, when the family has more than one
      distinct width (a single-width sweep has no width plane) and networks to draw.

    No figure is written empty. A figure that raises leaves a warning naming it and the others
    are still drawn (:func:`draw_safely`).

    Args:
        runs: runs-table columns (R,).
        arrays: :func:`phasespace.phase.diagram.phase_arrays` of ``runs``.
        thresholds: the label thresholds, e.g. a spec's ``[analysis]`` options (other keys
            ignored; :func:`phasespace.analysis.classify.thresholds`).

    Returns:
        The written paths.
    """
    opts = classify.thresholds(thresholds)
    alpha = np.asarray(runs["attention_rate"], dtype=float)
    width = np.asarray(runs["d_model"], dtype=float)
    circ = classify.circular_mask(runs["circularity"], opts["circular_threshold"])
    edges = np.asarray(arrays["edges__d_model_bin"], dtype=float)
    wbin = bin_index(width, edges)
    irr = (
        "distance_irrelevance_largest_wrong"
        if "distance_irrelevance_largest_wrong" in runs
        else "distance_irrelevance"
    )
    gs = np.asarray(runs.get("gradient_symmetricity", np.full(alpha.shape, np.nan)), dtype=float)
    di = np.asarray(runs.get(irr, np.full(alpha.shape, np.nan)), dtype=float)
    drawable = np.isfinite(alpha) & np.isfinite(gs) & np.isfinite(di)
    group_by = [str(c) for c in arrays.get("family_axes", FAMILY_AXES)]
    fam, _ = family_index(runs, group_by)
    slugs = family_slugs(arrays)
    paths = []
    for g, slug in enumerate(slugs):
        suffix = f"_{slug}" if slug else ""
        in_fam = fam == g
        for b in range(len(edges) - 1):
            in_bin = in_fam & (wbin == b)
            wlabel = bin_label(arrays, "d_model_bin", b).replace("–", "-")
            for subset, sel in (("all", in_bin), ("circular", in_bin & circ)):
                if not np.any(sel & drawable):
                    continue
                path = os.path.join(fig_dir, f"alpha_panels_d{wlabel}_{subset}{suffix}.png")
                name = f"d_model {wlabel.replace('-', '–')}, {subset}" + (f", {slug}" if slug else "")
                if draw_safely(
                    path,
                    plot_alpha_panels,
                    runs,
                    select=sel,
                    irrelevance_key=irr,
                    gradient_symmetricity_threshold=opts["gradient_symmetricity_threshold"],
                    distance_irrelevance_threshold=opts["distance_irrelevance_threshold"],
                    title=f"{title} {name}".strip(),
                ):
                    paths.append(path)
        if len(np.unique(width[in_fam & np.isfinite(width)])) < 2:
            continue  # a single width: no width plane to draw
        for subset in ("all", "circular"):
            sel = in_fam & circ if subset == "circular" else in_fam
            if not np.any(sel & drawable):
                continue
            path = os.path.join(fig_dir, f"phase_width_{subset}{suffix}.png")
            if draw_safely(
                path,
                plot_phase_width,
                runs,
                arrays,
                subset=subset,
                metrics=("gradient_symmetricity", irr),
                circular_threshold=opts["circular_threshold"],
                title=f"{title} {slug}".strip(),
                family=g,
                select=in_fam,
            ):
                paths.append(path)
    return paths
