"""Width buckets: which padded widths to compile for a set of true widths.

Networks of one static group (same p, depth, heads, activation, vocabulary) but different true
widths d_model share a compiled program only if they share a padded width D ≥ d. Padding is free
in numbers (a zero-padded network is the same network, :mod:`phasespace.population.stack`) but not in
work: a network of width d trained at width D pays the FLOPs of width D. One bucket per distinct
width wastes nothing but compiles one program per width (the paper's 2^U(5, 9) widths give ~480
distinct values); one bucket at the largest width compiles once but, for log-uniform widths,
spends most of its FLOPs on zeros. :func:`plan_widths` picks the bucket widths in between.

FLOP model (:func:`phasespace.population.flops.step_flops`, plain): the matrix-multiply FLOPs of
one full-batch training step of one network, i.e. forward and backward over all p² pairs of the
task, counted from the model's shapes (SPEC §2, :mod:`phasespace.models.transformer`).
Element-wise work (activations, softmax, loss, AdamW) is left out: it is a few percent of the
total at the paper's widths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phasespace.defaults import MAX_BUCKETS, MAX_WASTE
from phasespace.models.registry import Arch, make_arch
from phasespace.models.transformer import TransformerArch
from phasespace.population.flops import step_flops
from phasespace.spec.networks import STATIC_AXES, Network


@dataclasses.dataclass(frozen=True)
class WidthPlan:
    """Bucket widths for one static group.

    Attributes:
        widths: the bucket widths D, ascending (each the largest true width it holds).
        assignment: true width d → its bucket width D.
        true_flops: Σ over networks of :func:`step_flops` at the true width (per step).
        padded_flops: Σ over networks of :func:`step_flops` at the bucket width (per step).
        curve: padding waste of the best plan with k = 1, 2, … buckets (the trade-off the
            choice was made on), ``curve[k - 1]``.
    """

    widths: tuple[int, ...]
    assignment: Mapping[int, int]
    true_flops: float
    padded_flops: float
    curve: tuple[float, ...]

    @property
    def waste(self) -> float:
        """Fraction of the group's FLOPs spent on padding, 1 − true/padded, in [0, 1)."""
        return 1.0 - self.true_flops / self.padded_flops if self.padded_flops else 0.0


def _best_partitions(unique: np.ndarray, counts: np.ndarray, cost: np.ndarray, k_max: int):
    """Optimal contiguous partitions of sorted widths into k = 1..k_max groups (dynamic program).

    A group holding widths ``unique[i..j]`` costs ``cost[j] · Σ counts[i..j]`` (everyone pays
    the group's largest width). Returns (best cost per k, split points per k).
    """
    n = len(unique)
    csum = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    inf = np.inf
    # dp[j] = least cost of covering unique[0..j-1] with the current number of groups
    dp = np.full(n + 1, inf)
    dp[0] = 0.0
    back = np.zeros((k_max + 1, n + 1), dtype=np.int64)
    best = []
    for k in range(1, k_max + 1):
        new = np.full(n + 1, inf)
        for j in range(1, n + 1):
            i = np.arange(0, j)  # group = unique[i..j-1]
            c = dp[i] + cost[j - 1] * (csum[j] - csum[i])
            a = int(np.argmin(c))
            new[j] = c[a]
            back[k, j] = a
        dp = new
        best.append(dp[n])
    return best, back


def plan_widths(
    arch: TransformerArch,
    widths: Sequence[int],
    max_buckets: int = MAX_BUCKETS,
    max_waste: float = MAX_WASTE,
) -> WidthPlan:
    """Choose bucket widths for networks of true widths ``widths`` (one entry per network).

    For each number of buckets k = 1 … min(max_buckets, distinct widths) a dynamic program finds
    the contiguous grouping of the sorted widths with the fewest padded FLOPs (each group
    compiled at its largest width). The plan is the smallest k whose padding waste is at most
    ``max_waste``, or k = max_buckets (the least waste allowed) if none is: the fewest compiled
    programs that keep the padded FLOPs within the target.

    Args:
        arch: the group's static architecture (its ``d_model`` is ignored).
        widths: true d_model of each network, ints ≥ ``arch.n_heads``.
        max_buckets: cap on bucket widths (compiled programs), ≥ 1.
        max_waste: target fraction of FLOPs spent on padding, in [0, 1).

    Returns:
        :class:`WidthPlan`.

    Raises:
        ValueError: naming the argument, for an empty ``widths``, a width < n_heads,
            ``max_buckets < 1`` or ``max_waste`` outside [0, 1).
    """
    if len(widths) == 0:
        raise ValueError("widths: need at least one network width")
    if isinstance(max_buckets, bool) or not isinstance(max_buckets, (int, np.integer)) or max_buckets < 1:
        raise ValueError(f"max_buckets={max_buckets!r}: must be an integer ≥ 1")
    if not 0.0 <= max_waste < 1.0:
        raise ValueError(f"max_waste={max_waste!r}: must be in [0, 1)")
    w = np.asarray(widths, dtype=np.int64)
    if w.min() < arch.n_heads:
        raise ValueError(f"widths: {int(w.min())} is < n_heads={arch.n_heads} (d_head = floor(d/n_heads))")
    unique, counts = np.unique(w, return_counts=True)
    cost = np.asarray([step_flops(arch.with_width(int(d))) for d in unique], dtype=np.float64)
    true_flops = float(np.sum(cost * counts))
    k_max = min(int(max_buckets), len(unique))
    best, back = _best_partitions(unique, counts, cost, k_max)
    curve = tuple(1.0 - true_flops / b for b in best)
    k = next((i + 1 for i, c in enumerate(curve) if c <= max_waste + 1e-12), k_max)
    ends = []
    j = len(unique)
    for kk in range(k, 0, -1):
        ends.append(j - 1)
        j = int(back[kk, j])
    ends = sorted(ends)
    bucket_widths = tuple(int(unique[e]) for e in ends)
    assignment = {}
    start = 0
    for e in ends:
        for i in range(start, e + 1):
            assignment[int(unique[i])] = int(unique[e])
        start = e + 1
    return WidthPlan(
        widths=bucket_widths,
        assignment=assignment,
        true_flops=true_flops,
        padded_flops=float(best[k - 1]),
        curve=curve,
    )


def padding_report(buckets: Sequence) -> dict:
    """Padding waste of a list of :class:`Bucket` (for ``environment.json``).

    Returns:
        dict: ``waste`` (fraction of the sweep's per-step FLOPs spent on padding),
        ``true_flops_per_step`` and ``padded_flops_per_step`` (Σ over networks of
        :func:`step_flops`), and ``buckets``: per bucket its ``key``, ``d_model`` (bucket width),
        ``networks``, ``true_widths`` (min, max) and ``waste``.
    """
    rows = []
    true_total = padded_total = 0.0
    for b in buckets:
        widths = [int(n.values["d_model"]) for n in b.networks]
        t = float(sum(step_flops(b.arch.with_width(d)) for d in widths))
        pf = float(step_flops(b.arch) * len(widths))
        true_total += t
        padded_total += pf
        rows.append(
            {
                "key": b.key,
                "d_model": b.arch.d_model,
                "networks": len(widths),
                "true_widths": [min(widths), max(widths)],
                "waste": 1.0 - t / pf if pf else 0.0,
            }
        )
    return {
        "waste": 1.0 - true_total / padded_total if padded_total else 0.0,
        "true_flops_per_step": true_total,
        "padded_flops_per_step": padded_total,
        "buckets": rows,
    }


@dataclasses.dataclass(frozen=True)
class Bucket:
    """A group of networks sharing one compiled program.

    Attributes:
        key: a stable name (used for checkpoint folders).
        arch: static architecture at the bucket width.
        networks: the sweep's networks in this bucket (run-axis order).
    """

    key: str
    arch: Arch
    networks: tuple[Network, ...]


def _plan_by_residue(
    arch: Arch, widths: Sequence[int], max_buckets: int, max_waste: float
) -> tuple[list[int], dict[int, int]]:
    """Linearformer bucket widths: :func:`plan_widths` within each residue class d mod n_ctx.

    A Linearformer of width d pads exactly into a bucket of width D only if d mod n_ctx ≤
    D mod n_ctx (:func:`phasespace.models.linearformer.resize_params`: the last d mod n_ctx input
    columns of the first block must keep their place after the concatenated embeddings), so widths
    share a bucket only with widths of their own residue (at most ``max_buckets`` per class).

    Returns:
        ``(bucket widths ascending, true width → bucket width)``.
    """
    by_residue: dict[int, list[int]] = {}
    for w in widths:
        by_residue.setdefault(w % arch.n_ctx, []).append(w)
    out: list[int] = []
    assignment: dict[int, int] = {}
    for ws in by_residue.values():
        plan = plan_widths(arch, ws, max_buckets, max_waste)
        out.extend(plan.widths)
        assignment.update(plan.assignment)
    return sorted(out), assignment


def plan_buckets(
    networks: list[Network],
    max_buckets: int = MAX_BUCKETS,
    max_waste: float = MAX_WASTE,
) -> list[Bucket]:
    """Group networks by static axes, then split each group into width buckets.

    The bucket widths of a group are chosen by :func:`phasespace.population.buckets.plan_widths` (fewest
    compiled programs whose padded FLOPs waste at most ``max_waste``, at most ``max_buckets``
    of them); each network goes to the smallest bucket width ≥ its true width. Bucket keys
    (``p59_L1_H4_relu_D128``, ``p59_linearformer_L1_tanh_D96``) are unique and depend only on
    the spec. Within a bucket the networks keep sweep order. Linearformer widths are planned per
    residue mod n_ctx (:func:`_plan_by_residue`); each MLP-model group is one bucket.
    """
    groups: dict[tuple[Any, ...], list[Network]] = {}
    for n in networks:
        groups.setdefault(n.static_key(), []).append(n)
    buckets = []
    for key, nets in groups.items():
        vals = dict(zip(STATIC_AXES, key, strict=True))
        group_arch = make_arch(
            vals["model"],
            p=vals["p"],
            d_model=max(int(n.values["d_model"]) for n in nets),
            n_layers=vals["n_layers"],
            n_heads=vals["n_heads"],
            act=vals["act"],
            diff_vocab=vals["diff_vocab"],
            eqn_sign=vals["eqn_sign"],
        )
        widths = [int(n.values["d_model"]) for n in nets]
        if vals["model"] == "transformer":
            plan = plan_widths(group_arch, widths, max_buckets, max_waste)
            bucket_widths, assignment = plan.widths, plan.assignment
        elif vals["model"] == "linearformer":
            bucket_widths, assignment = _plan_by_residue(group_arch, widths, max_buckets, max_waste)
        else:  # MLP models: one bucket per group (their FLOPs are not modelled by the planner)
            bucket_widths, assignment = [group_arch.d_model], dict.fromkeys(widths, group_arch.d_model)
        for width in bucket_widths:
            arch = dataclasses.replace(group_arch, d_model=width)
            members = tuple(n for n in nets if assignment[int(n.values["d_model"])] == width)
            if vals["model"] == "linearformer":
                name = (
                    f"p{arch.p}_linearformer_L{arch.n_layers}_{arch.act}"
                    f"{'_dv' if arch.diff_vocab else ''}{'_eq' if arch.eqn_sign else ''}_D{width}"
                )
            elif vals["model"] != "transformer":
                name = f"p{arch.p}_{vals['model']}_D{width}"
            else:
                name = (
                    f"p{arch.p}_L{arch.n_layers}_H{arch.n_heads}_{arch.act}"
                    f"{'_dv' if arch.diff_vocab else ''}{'_eq' if arch.eqn_sign else ''}_D{width}"
                )
            buckets.append(Bucket(name, arch, members))
    return buckets
