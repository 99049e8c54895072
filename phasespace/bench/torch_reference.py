"""A straightforward PyTorch one-network-at-a-time training loop (the benchmarks' baseline).

Written the way the paper's reference implementation trains a transformer (SPEC §2, §4): a
``nn.Module`` over the whole sequence (both positions, logits read at the last), full-batch AdamW
(the transformer betas of :data:`phasespace.defaults.RECIPE_DEFAULTS`, weight decay 2.0, warm-up
lr·min(t/10, 1)), the cross-entropy evaluated in
float64, and each step also evaluating the held-out pairs (no gradient) — the same function the
engine computes per network-step (train loss and gradient, held-out loss and accuracy).

``last_only=True`` is an optimised variant that runs the MLP at the last position alone.

Optional dependency (``pip install torch``, a CPU build is enough): importing this module raises
ImportError when torch is absent, and the benchmark skips the baseline with a message.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from phasespace.defaults import RECIPE_DEFAULTS


class RefTransformer(nn.Module):
    """The SPEC §2 transformer (1 layer, no LayerNorm, attention rate α) in PyTorch."""

    def __init__(self, p: int, d_model: int, n_heads: int = 4, alpha: float = 0.5, act: str = "relu"):
        super().__init__()
        d, h = d_model, n_heads
        dh, dm, v = d // h, 4 * d, p
        self.h, self.dh, self.alpha, self.act = h, dh, alpha, act
        r = torch.randn
        self.W_E = nn.Parameter(r(d, v) / math.sqrt(d))
        self.W_pos = nn.Parameter(r(2, d) / math.sqrt(d))
        self.W_Q = nn.Parameter(r(h, dh, d) / math.sqrt(d))
        self.W_K = nn.Parameter(r(h, dh, d) / math.sqrt(d))
        self.W_V = nn.Parameter(r(h, dh, d) / math.sqrt(d))
        self.W_O = nn.Parameter(r(d, h * dh) / math.sqrt(d))
        self.W_in = nn.Parameter(r(dm, d) / math.sqrt(dm))
        self.b_in = nn.Parameter(torch.zeros(dm))
        self.W_out = nn.Parameter(r(d, dm) / math.sqrt(d))
        self.b_out = nn.Parameter(torch.zeros(d))
        self.W_U = nn.Parameter(r(d, v) / math.sqrt(v))

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        x = self.W_E[:, tokens].permute(1, 2, 0) + self.W_pos  # (B, 2, d)
        q = torch.einsum("ihd,bpd->biph", self.W_Q, x)
        k = torch.einsum("ihd,bpd->biph", self.W_K, x)
        v = torch.einsum("ihd,bpd->biph", self.W_V, x)
        scores = torch.einsum("biph,biqh->biqp", k, q) / math.sqrt(self.dh)
        attn = self.alpha * torch.softmax(scores, dim=-1) + (1 - self.alpha)
        z = torch.einsum("biph,biqp->biqh", v, attn)
        z = z.permute(0, 2, 1, 3).reshape(z.shape[0], z.shape[2], -1)
        x = x + torch.einsum("df,bqf->bqd", self.W_O, z)
        if last_only:
            x = x[:, -1:]
        pre = torch.einsum("md,bpd->bpm", self.W_in, x) + self.b_in
        acts = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "tanh": torch.tanh}
        post = acts[self.act](pre)
        x = x + torch.einsum("dm,bpm->bpd", self.W_out, post) + self.b_out
        return x[:, -1] @ self.W_U


def train_steps_per_second(
    p: int,
    d_model: int,
    steps: int,
    repeats: int = 3,
    last_only: bool = False,
    seed: int = 0,
    threads: int | None = None,
) -> float:
    """Best-of-``repeats`` optimizer steps per second of one network trained with the reference loop.

    Each repeat runs ``steps`` full-batch steps (after 2 warm-up steps) on a fresh network, with
    ``threads`` intra-op threads (default: torch's own choice).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    a, b = np.divmod(np.arange(p * p), p)
    tokens = torch.from_numpy(np.stack([a, b], 1))
    labels = torch.from_numpy((a + b) % p)
    perm = np.random.default_rng(seed).permutation(p * p)
    n_tr = int(0.8 * p * p)
    tr, te = torch.from_numpy(perm[:n_tr]), torch.from_numpy(perm[n_tr:])
    best = math.inf
    for _ in range(repeats):
        model = RefTransformer(p, d_model)
        recipe = RECIPE_DEFAULTS["transformer"]
        opt = torch.optim.AdamW(
            model.parameters(),
            lr=1e-3,
            betas=(recipe["b1"], recipe["b2"]),
            eps=recipe["eps"],
            weight_decay=2.0,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(t / 10, 1.0))

        def step(model: RefTransformer = model, opt: torch.optim.Optimizer = opt, sched=sched) -> None:
            logits = model(tokens[tr], last_only)
            loss = nn.functional.cross_entropy(logits.double(), labels[tr])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                test_logits = model(tokens[te], last_only)
                nn.functional.cross_entropy(test_logits.double(), labels[te])
                (test_logits.argmax(-1) == labels[te]).float().mean().item()

        for _ in range(2):
            step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, time.perf_counter() - t0)
    return steps / best
