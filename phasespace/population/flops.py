"""Analytic FLOP counts of one network-step (SPEC §2 model, SPEC §4 full-batch step).

A network-step is one optimizer step of one network: a forward pass over all p² pairs, its
backward pass and the AdamW update. Matrix products and the per-pair mixing multiply-adds are
counted (2 FLOPs per multiply-add); the backward pass is counted as twice the forward (one
product for the input gradient, one for the weight gradient), the usual 3× rule; softmax,
activation, loss and optimizer arithmetic are left out (a few % here). The counts are the
arithmetic each computation performs, so achieved FLOP/s = network-steps/s × count.
"""

from __future__ import annotations

from phasespace.models.fast import fold_unembedding, supports_fast
from phasespace.models.linearformer import LinearformerArch
from phasespace.models.mlp import MLPArch
from phasespace.models.registry import Arch
from phasespace.models.transformer import TransformerArch


def plain_forward_flops(arch: Arch) -> int:
    """Matrix-multiply FLOPs (2 per multiply-add) of the plain model's forward pass of ONE input
    pair (SPEC §2; appendix MLP models SPEC §3).

    Transformer, per block with T = n_ctx input positions and T_q query positions (T, or 1 in
    the last block, which computes queries, attention and the MLP at the last position only, as
    :class:`~phasespace.models.transformer.Block` does), hd = n_heads·d_head, d_mlp = 4·d_model::

        Q 2·T_q·hd·d + K, V 2·2·T·hd·d + scores 2·T_q·T·hd + pattern·V 2·T_q·T·hd
        + W_O 2·T_q·d·hd + W_in 2·T_q·d_mlp·d + W_out 2·T_q·d·d_mlp

    plus the unembedding 2·d·V at the last position. MLP models: l1 (d × d_in, twice for γ),
    l2 (d × d for β and γ) and the unembedding. Linearformer: n_layers products d × d (the
    first on the zero-padded concatenation of the embeddings, which is a gather, not a product)
    and the unembedding, 2·n_layers·d² + 2·d·V.

    Args:
        arch: the architecture at the width whose cost is wanted (a true or a bucket width).
    """
    if isinstance(arch, MLPArch):
        h = arch.d_model
        hidden_layers = 2 if arch.kind in ("B", "C") else 1
        l1_uses = 2 if arch.kind == "C" else 1  # γ applies W₁ to E_a and E_b separately
        return 2 * h * arch.d_in * l1_uses + 2 * h * h * (hidden_layers - 1) + 2 * h * arch.vocab
    if isinstance(arch, LinearformerArch):
        d = arch.d_model
        return 2 * arch.n_layers * d * d + 2 * d * arch.vocab
    d, hd, m, t, v = arch.d_model, arch.n_heads * arch.d_head, arch.d_mlp, arch.n_ctx, arch.vocab
    total = 2 * d * v
    for layer in range(arch.n_layers):
        tq = 1 if layer == arch.n_layers - 1 else t
        total += 2 * tq * hd * d + 2 * 2 * t * hd * d  # Q, K, V
        total += 2 * 2 * tq * t * hd  # scores and pattern · values
        total += 2 * tq * d * hd  # W_O
        total += 2 * 2 * tq * d * m  # W_in, W_out
    return total


def fast_forward_macs(arch: TransformerArch) -> tuple[int, int]:
    """Multiply-adds of :func:`phasespace.models.fast.fast_logits`: ``(per_vocab, per_pair)``.

    The total for the p² table is ``p·per_vocab + p²·per_pair``.
    """
    d, h, dh, dm, v = arch.d_model, arch.n_heads, arch.d_head, arch.d_mlp, arch.vocab
    hd = h * dh
    per_vocab = (
        5 * d * hd  # q1, k0, k1, v0, v1
        + 2 * h * dh * d  # U0, U1 (W_O per head)
        + 2 * h * d * (dm + v)  # U0, U1 projected on W_in and W_U
        + d * (dm + v)  # X1 projected
    )
    tail = dm * v if fold_unembedding(arch) else dm * d + d * v
    per_pair = hd + 2 * h * (dm + v) + tail  # scores, mixing, MLP output → logits
    return per_vocab, per_pair


def step_flops(arch: Arch, fast: bool = False) -> int:
    """FLOPs of one full-batch training step of one network over all p² pairs (forward +
    backward, the 3× rule: every product has both operands depending on parameters, so the
    backward pass computes two products of the forward's size for each). ``tests/population/
    test_buckets.py`` checks the plain count against the products of the traced training step.

    Args:
        arch: the bucket (true width for an unpadded network).
        fast: count the exact fast computation (:mod:`phasespace.models.fast`) when the
            architecture allows it; False (default): the plain model's products, which the
            width-bucket planner uses.

    Returns:
        int, FLOPs per network-step.
    """
    p = arch.p
    if fast and supports_fast(arch):
        per_vocab, per_pair = fast_forward_macs(arch)
        return 3 * 2 * (p * per_vocab + p * p * per_pair)
    return 3 * p * p * plain_forward_flops(arch)
