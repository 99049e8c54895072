"""A float64 NumPy transcription of SPEC §2 (the reference transformer's forward pass) and of the
reference code's attention-free ``Linearformer`` (``code/train-main.py``), used as independent
oracles by the tests. Operates on the engine's parameter trees (reference shapes)."""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def activation(pre: np.ndarray, act: str) -> np.ndarray:
    """The reference ``act_fn``: ReLU, exact-erf GeLU or tanh, float64."""
    if act == "relu":
        return np.maximum(pre, 0)
    if act == "gelu":
        return 0.5 * pre * (1 + erf(pre / np.sqrt(2)))
    if act == "tanh":
        return np.tanh(pre)
    raise ValueError(act)


def forward(params: dict, tokens: np.ndarray, alpha: float, n_heads: int, act: str = "relu") -> np.ndarray:
    """Logits (B, V) at the last position, float64, straight from SPEC §2."""
    P = {k: v for k, v in params["params"].items()}
    W_E = np.asarray(P["W_E"], np.float64)
    W_pos = np.asarray(P["W_pos"], np.float64)
    W_U = np.asarray(P["W_U"], np.float64)
    x = W_E[:, tokens].transpose(1, 2, 0) + W_pos  # (B, n, d)
    n_layers = sum(1 for k in P if k.startswith("blocks_"))
    for i in range(n_layers):
        b = {k: np.asarray(v, np.float64) for k, v in P[f"blocks_{i}"].items()}
        d_head = b["W_Q"].shape[1]
        q = np.einsum("hed,bnd->bhne", b["W_Q"], x)
        k = np.einsum("hed,bnd->bhne", b["W_K"], x)
        v = np.einsum("hed,bnd->bhne", b["W_V"], x)
        s = np.einsum("bhqe,bhke->bhqk", q, k) / np.sqrt(d_head)
        s = s - s.max(-1, keepdims=True)
        m = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
        m = alpha * m + (1 - alpha) * np.ones_like(m)
        z = np.einsum("bhqk,bhke->bqhe", m, v).reshape(x.shape[0], x.shape[1], -1)
        x = x + np.einsum("df,bqf->bqd", b["W_O"], z)
        pre = np.einsum("md,bqd->bqm", b["W_in"], x) + b["b_in"]
        post = activation(pre, act)
        x = x + np.einsum("dm,bqm->bqd", b["W_out"], post) + b["b_out"]
    return x[:, -1, :] @ W_U


def linearformer_forward(params: dict, tokens: np.ndarray, act: str = "relu") -> np.ndarray:
    """Logits (B, V), float64, of the reference ``Linearformer`` written out by hand: the n_ctx
    token embeddings W_E[:, t] (each of width e = W_E.shape[0]) laid end to end, zero-padded on the
    right to d = W_U.shape[0], then x ← act(W_in x + b_in) per block (no residual), logits x·W_U."""
    P = params["params"]
    W_E = np.asarray(P["W_E"], np.float64)
    W_U = np.asarray(P["W_U"], np.float64)
    d = W_U.shape[0]
    rows = []
    for toks in np.asarray(tokens):
        x = np.zeros(d)
        for i, t in enumerate(toks):
            x[i * W_E.shape[0] : (i + 1) * W_E.shape[0]] = W_E[:, t]
        rows.append(x)
    x = np.stack(rows)
    n_layers = sum(1 for k in P if k.startswith("blocks_"))
    for i in range(n_layers):
        W_in = np.asarray(P[f"blocks_{i}"]["W_in"], np.float64)
        b_in = np.asarray(P[f"blocks_{i}"]["b_in"], np.float64)
        x = activation(x @ W_in.T + b_in, act)
    return x @ W_U


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example −log softmax[label] in float64, as log1p(Σ_{j≠y} exp(l_j − l_y)).

    (The textbook ``logsumexp − l_y`` loses all relative precision in float64 too once the loss is
    below ~1e-14·|l|; this form keeps it, so it serves as the oracle at margins up to 30+.)"""
    logits = np.asarray(logits, np.float64)
    idx = np.arange(len(labels))
    diff = logits - logits[idx, labels][:, None]
    e = np.exp(diff)
    e[idx, labels] = 0.0
    return np.log1p(e.sum(-1))
