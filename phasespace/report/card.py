"""Network cards (``phasespace show``): the paper's pictures of one network, with its numbers.

A card is a few PNGs (and a JSON of the numbers on them) for one network of a sweep directory (a
row of ``runs.csv``, parameters from ``params/*.npz``) or one released reference checkpoint
(``<runid>.npz`` + ``<runid>.json``, e.g. ``data/reference``):

* ``<name>_embedding.png`` — the first operand's embedding table projected on its principal
  components in pairs (PC1–2, PC3–4, …), one labelled point per token, each pair titled with
  the key frequency k, δ = k⁻¹ mod p and the circularity of its two components (SPEC §5.3–5.4:
  the paper's circle figures). Where both components share k the tokens are joined in the order
  0, δ, 2δ, … (neighbours on the circle).
* ``<name>_logits.png`` — the correct logit Q_{ab,(a+b)} and the largest wrong logit as p × p
  heatmaps L[(a + b) mod p, (a − b) mod p] (the tables behind distance irrelevance, SPEC §5.2)
  with their profiles along a − b: a Pizza's rows vary with a − b, a Clock's do not. That layout
  is addition's: for a network of another operation (:mod:`phasespace.operations`) the correct
  logit Q_{ab,f(a,b)} and the largest wrong logit are drawn indexed by (a, b), and the figure
  says why.
* ``<name>_fits.png`` — per circle, the FVE of the isolated circle's logits by the Clock, Pizza
  and accompanying templates (SPEC §5.5; for addition only: another operation's card says so in
  place of the panel) and the isolated circle's accuracy per (a − b).
* ``<name>_training.png`` — training curves (loss, accuracy; logarithmic steps) from
  ``history.npz``; a reference checkpoint has none, and its card says so.
* ``<name>_metrics.png`` — every metric along training (``metrics_history.npz``), when recorded.
* ``<name>.json`` — the numbers on the card.

Every number comes from the analysis code itself: one :func:`~phasespace.analysis.circuits.analyze_full`
call per group of networks of the same architecture (key frequencies, circles, FVEs, gradient
symmetricity, distance irrelevance, circularity), the PCA of
:func:`phasespace.analysis.metrics.pca` and the logit tables of
:func:`phasespace.models.fast.logits_table` and :mod:`phasespace.analysis.metrics`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from phasespace.analysis import metrics
from phasespace.analysis.circuits import CircuitOptions, analyze_full
from phasespace.defaults import ALGORITHMS, ATTENTION_FAMILIES
from phasespace.io import store
from phasespace.io.params import list_bucket_params, load_bucket_params
from phasespace.io.reference import load_reference_checkpoint, reference_labels
from phasespace.models.fast import logits_table
from phasespace.models.registry import Arch, arch_columns, embedding_tables, family
from phasespace.operations import ADDITION
from phasespace.phase.figures import save_figure
from phasespace.population.stack import attn_scale
from phasespace.spec.parse import ANALYSIS_DEFAULTS
from phasespace.tasks import all_pairs, is_addition, operation_labels, train_mask

FIGURES = ("embedding", "logits", "fits", "training", "metrics")
"""The PNGs of a card, ``<name>_<figure>.png`` (``metrics`` only when recorded)."""

NO_CURVES_REFERENCE = (
    "No training curves: a released reference checkpoint holds only its final parameters and "
    "training config (no loss or accuracy history)."
)

NO_CIRCLES = (
    "No circles: no pair of principal components shares a key frequency\n"
    "with Fourier energy ≥ the analysis' min_power, so nothing to isolate or fit."
)


@dataclasses.dataclass
class Network:
    """One network to draw, with everything the card needs.

    Attributes:
        name: file-name stem of its card (``run<index>`` for a sweep row, the run id of a
            reference checkpoint).
        source: the sweep directory or checkpoint folder it came from.
        arch: its architecture (a sweep's bucket width: padding columns are zero and change no
            number).
        params: its parameters (no run axis).
        attention_rate, attn_scale: the per-network data of the forward pass.
        mask: bool (p²,) its training split (reference checkpoints: drawn from data seed 0 with
            the config's ``frac``, as ``phasespace analyze`` does; they do not record theirs).
        info: description shown on the card: its ``runs.csv`` row, or the checkpoint's
            configuration.
        history: training curves ``step`` (T,) and ``train_loss`` … ``test_accuracy`` (T,), or
            None; ``history_note`` says why when None.
        metrics_history: every metric along training, ``step`` (T,) and each metric (T, ...),
            or None.
        analysis: the ``[analysis]`` options (a sweep's spec; defaults otherwise).
        labels: int32 (p²,) the labels it was trained on (its operation); None: addition.
        operation: the operation's name (:mod:`phasespace.operations`).
    """

    name: str
    source: str
    arch: Arch
    params: Any
    attention_rate: float
    attn_scale: float
    mask: np.ndarray
    info: dict[str, Any]
    history: dict[str, np.ndarray] | None = None
    history_note: str = ""
    metrics_history: dict[str, np.ndarray] | None = None
    analysis: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(ANALYSIS_DEFAULTS))
    labels: np.ndarray | None = None
    operation: str = ADDITION

    def task_labels(self) -> np.ndarray:
        """int32 (p²,): :attr:`labels`, or addition's when None."""
        if self.labels is None:
            return operation_labels(ADDITION, self.arch.p)
        return np.asarray(self.labels, np.int32)


# --------------------------------------------------------------------------------------------- #
# Loading networks


def is_sweep_dir(folder: str) -> bool:
    """True if ``folder`` is a finished sweep directory (has ``runs.csv``)."""
    return os.path.exists(os.path.join(folder, "runs.csv"))


def sweep_run_name(index: int) -> str:
    """The card name of row ``index`` of a sweep's ``runs.csv``."""
    return f"run{int(index)}"


def _load_npz(path: str) -> dict[str, np.ndarray] | None:
    if not os.path.exists(path):
        return None
    return store.read_npz(
        path, f"{os.path.basename(path)} (re-run `phasespace run` on the sweep to rewrite it)"
    )


def _row_slice(arrays: Mapping[str, np.ndarray] | None, pos: int) -> dict[str, np.ndarray] | None:
    """Row ``pos`` of every per-network array (leading axis R; ``step`` kept whole)."""
    if arrays is None or "step" not in arrays:
        return None
    out = {"step": np.asarray(arrays["step"])}
    for k, v in arrays.items():
        if k != "step" and v.ndim >= 1 and pos < v.shape[0]:
            out[k] = v[pos]
    return out


def iter_sweep_networks(folder: str, runs: Iterable[int] | None = None) -> Iterator[list[Network]]:
    """The networks of a finished sweep directory, one list per saved bucket (a bucket's
    parameters are read once; only one bucket is held at a time).

    Args:
        folder: the sweep directory (``runs.csv``, ``params/*.npz``; ``history.npz``,
            ``metrics_history.npz`` and ``spec.json`` where present).
        runs: values of the ``index`` column to load (default: every row).

    Raises:
        FileNotFoundError: no ``runs.csv`` or no saved parameters.
        ValueError: an index that is not a row of ``runs.csv`` (naming the valid range), or one
            without saved parameters.
    """
    table = store.read_csv(os.path.join(folder, "runs.csv"))
    header = list(table)
    index = np.asarray(table["index"], np.int64)
    pos = {int(i): r for r, i in enumerate(index)}
    wanted = list(pos) if runs is None else [int(i) for i in runs]
    for i in wanted:
        if i not in pos:
            lo, hi = (int(index.min()), int(index.max())) if len(index) else (0, -1)
            raise ValueError(f"{folder}: no network with index {i} in runs.csv (indices {lo}…{hi})")
    files = list_bucket_params(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no saved final parameters (params/*.npz); re-run the sweep")
    spec_path = os.path.join(folder, "spec.json")
    analysis = dict(ANALYSIS_DEFAULTS)
    if os.path.exists(spec_path):
        with open(spec_path) as f:
            analysis.update(json.load(f).get("analysis") or {})
    history = _load_npz(os.path.join(folder, "history.npz"))
    tracked = _load_npz(os.path.join(folder, "metrics_history.npz"))
    every = int(analysis.get("every", 0) or 0)
    want = set(wanted)
    seen: set[int] = set()
    for path in files:
        b = load_bucket_params(path)
        nets = []
        for j, i in enumerate(np.asarray(b.index, np.int64)):
            i = int(i)
            if i not in want:
                continue
            seen.add(i)
            r = pos[i]
            hist = _row_slice(history, r)
            note = ""
            if hist is None:
                note = "No training curves: this sweep directory has no history.npz."
            elif not any(np.any(np.isfinite(hist[k])) for k in hist if k != "step"):
                hist, note = None, "No training curves recorded for this network (history.npz holds NaN)."
            mh = _row_slice(tracked, r)
            if mh is None:
                note += (
                    " Metrics along training were not recorded ([analysis] every = 0)."
                    if every == 0
                    else " metrics_history.npz is missing."
                )
            nets.append(
                Network(
                    name=sweep_run_name(i),
                    source=folder,
                    arch=b.arch,
                    params=jax.tree_util.tree_map(lambda x, j=j: np.asarray(x[j]), b.params),
                    attention_rate=float(b.hparams["attention_rate"][j]),
                    attn_scale=float(b.hparams["attn_scale"][j]),
                    mask=np.asarray(b.hparams["train_mask"][j], bool),
                    labels=np.asarray(b.hparams["labels"][j], np.int32),
                    operation=str(table["operation"][r]) if "operation" in table else ADDITION,
                    info={c: _py(table[c][r]) for c in header},
                    history=hist,
                    history_note=note.strip(),
                    metrics_history=mh,
                    analysis=analysis,
                )
            )
        if nets:
            yield nets
    missing = [i for i in wanted if i not in seen]
    if missing:
        raise ValueError(f"{folder}: no saved parameters for networks {missing[:10]} (params/*.npz)")


def load_sweep_networks(folder: str, runs: Iterable[int] | None = None) -> list[Network]:
    """Every network of :func:`iter_sweep_networks` in one list, in the order of ``runs``
    (default: ``runs.csv`` order)."""
    found = {int(n.info["index"]): n for nets in iter_sweep_networks(folder, runs) for n in nets}
    order = [int(i) for i in runs] if runs is not None else sorted(found)
    return [found[i] for i in order]


def reference_run_ids(folder: str) -> list[str]:
    """Run ids of the checkpoints in a reference folder (``<runid>.npz`` with ``<runid>.json``)."""
    return sorted(
        os.path.basename(p)[:-4]
        for p in glob.glob(os.path.join(folder, "*.npz"))
        if os.path.exists(p[:-4] + ".json")
    )


def load_reference_network(folder: str, run: str) -> Network:
    """A released reference checkpoint ``<folder>/<run>.npz`` as a :class:`Network`.

    Raises:
        ValueError: no such checkpoint, naming the run ids present.
    """
    path = os.path.join(folder, f"{run}.npz")
    if not (os.path.exists(path) and os.path.exists(path[:-4] + ".json")):
        raise ValueError(f"{folder}: no checkpoint {run!r}; run ids: {', '.join(reference_run_ids(folder))}")
    arch, params, cfg = load_reference_checkpoint(path)
    no_attn = family(arch) not in ATTENTION_FAMILIES
    alpha = 0.0 if no_attn else float(cfg.get("attn_coeff", 1.0))
    info = {
        "run": run,
        **arch_columns(arch),
        "attention_rate": float("nan") if no_attn else alpha,
    }
    return Network(
        name=run,
        source=folder,
        arch=arch,
        params=params,
        attention_rate=alpha,
        attn_scale=attn_scale(arch.d_model, arch.n_heads),
        mask=train_mask(arch.p, float(cfg.get("frac", 0.8)), 0),
        labels=reference_labels(cfg, arch.p)[0],
        info=info,
        history=None,
        history_note=NO_CURVES_REFERENCE,
    )


def load_network(folder: str, run: str | int) -> Network:
    """One network: row ``run`` (its ``index``) of a sweep directory, or the checkpoint with run
    id ``run`` of a reference folder.

    Raises:
        ValueError: ``run`` names no network of ``folder`` (with the valid choices).
        FileNotFoundError: ``folder`` is neither a sweep directory nor a checkpoint folder.
    """
    if is_sweep_dir(folder):
        try:
            index = int(str(run).removeprefix("run"))  # 3 or run3 (the card's name)
        except ValueError:
            msg = f"{folder}: --run {run!r}: a sweep's networks are row indices of runs.csv"
            raise ValueError(msg) from None
        return load_sweep_networks(folder, [index])[0]
    if not os.path.isdir(folder) or not reference_run_ids(folder):
        raise FileNotFoundError(
            f"{folder}: neither a sweep directory (runs.csv) nor a folder of reference checkpoints "
            "(<runid>.npz + <runid>.json)"
        )
    return load_reference_network(folder, str(run))


def _py(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


# --------------------------------------------------------------------------------------------- #
# The card's numbers


@dataclasses.dataclass
class Card:
    """A network with the numbers and tables its figures show.

    Attributes:
        network: the :class:`Network`.
        scalars: every per-network scalar of :func:`~phasespace.analysis.circuits.analyze_full`
            (Python scalars).
        arrays: its per-network arrays (``pc_*``, ``circle_*``).
        scores: float32 (p, n) principal-component scores of the first operand's table
            (:func:`phasespace.analysis.metrics.pca`), n = the components examined.
        logits: float32 (p², V) the full logit table (:func:`~phasespace.tasks.all_pairs` order).
        correct_table, wrong_table: float32 (p, p): the correct and the largest wrong logit, as
            L[(a + b) mod p, (a − b) mod p] for addition, as L[a, b] for another operation.
        addition: whether the network's labels are (a + b) mod p (the layout of the tables, and
            whether the Clock/Pizza metrics are defined).
    """

    network: Network
    scalars: dict[str, Any]
    arrays: dict[str, np.ndarray]
    scores: np.ndarray
    logits: np.ndarray
    correct_table: np.ndarray
    wrong_table: np.ndarray
    addition: bool = True

    @property
    def p(self) -> int:
        return self.network.arch.p

    def circles(self) -> list[dict[str, Any]]:
        """The circles found (SPEC §5.4–5.5), largest variance first: ``k``, ``delta``,
        ``components``, ``variance``, ``accompanies``, ``accuracy``, ``fve_clock``,
        ``fve_pizza``, ``fve_accompanying``."""
        a = self.arrays
        n = int(self.scalars["n_circles"])
        out = []
        for i in range(n):
            out.append(
                {
                    "k": int(a["circle_frequency"][i]),
                    "delta": int(a["circle_delta"][i]),
                    "components": int(a["circle_components"][i]),
                    "variance": float(a["circle_variance"][i]),
                    "accompanies": int(a["circle_accompanies"][i]),
                    "accuracy": float(a["circle_accuracy"][i]),
                    "fve_clock": float(a["circle_fve_clock"][i]),
                    "fve_pizza": float(a["circle_fve_pizza"][i]),
                    "fve_accompanying": float(a["circle_fve_accompanying"][i]),
                }
            )
        return out

    def numbers(self) -> dict[str, Any]:
        """The card's numbers as a JSON-able dict (written as ``<name>.json``)."""
        a = self.arrays
        return {
            "name": self.network.name,
            "source": self.network.source,
            "info": self.network.info,
            "metrics": self.scalars,
            "components": [
                {
                    "pc": j + 1,
                    "k": int(a["pc_frequency"][j]),
                    "delta": int(a["pc_delta"][j]),
                    "circularity": float(a["pc_power"][j]),
                    "variance": float(a["pc_variance"][j]),
                }
                for j in range(self.scores.shape[1])
            ],
            "circles": self.circles(),
            "history": "recorded" if self.network.history is not None else self.network.history_note,
        }


@functools.lru_cache(maxsize=16)
def _logits_fn(arch: Arch):
    return jax.jit(functools.partial(logits_table, arch))


def _scalar(v: np.ndarray) -> Any:
    v = np.asarray(v)
    return str(v) if v.dtype.kind in "US" else v.item()


def compute_cards(networks: Sequence[Network]) -> list[Card]:
    """The :class:`Card` of every network; networks of the same architecture (and analysis
    options) are analysed together in one vmapped :func:`analyze_full` call."""
    groups: dict[Any, list[int]] = {}
    for i, net in enumerate(networks):
        key = (net.arch, json.dumps(net.analysis, sort_keys=True, default=str))
        groups.setdefault(key, []).append(i)
    cards: list[Card | None] = [None] * len(networks)
    for (arch, _), idx in groups.items():
        nets = [networks[i] for i in idx]
        params = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[n.params for n in nets])
        hp = {
            "attention_rate": np.asarray([n.attention_rate for n in nets], np.float32),
            "attn_scale": np.asarray([n.attn_scale for n in nets], np.float32),
            "train_mask": np.stack([n.mask for n in nets]),
            "labels": np.stack([n.task_labels() for n in nets]),
        }
        scalars, arrays = analyze_full(arch, params, hp, nets[0].analysis)
        n_comp = CircuitOptions.from_mapping(nets[0].analysis).components(arch)
        tokens = jnp.asarray(all_pairs(arch.task)[0])
        p = arch.p
        for j, i in enumerate(idx):
            net = nets[j]
            table_a, _ = embedding_tables(arch, net.params)
            with jax.default_matmul_precision("highest"):
                decomp = metrics.pca(jnp.asarray(table_a))
                logits = _logits_fn(arch)(
                    net.params, jnp.float32(net.attention_rate), jnp.float32(net.attn_scale), tokens
                )
            labels = net.task_labels()
            addition = bool(is_addition(labels, p))
            if addition:
                correct = metrics.sum_diff_table(metrics.correct_logits(logits, p), p)
                wrong = metrics.sum_diff_table(metrics.largest_wrong_logits(logits, p), p)
            else:
                correct, wrong = _ab_tables(np.asarray(logits), labels, p)
            cards[i] = Card(
                network=net,
                scalars={k: _scalar(v[j]) for k, v in scalars.items()},
                arrays={k: np.asarray(v[j]) for k, v in arrays.items()},
                scores=np.asarray(decomp.scores[:, :n_comp]),
                logits=np.asarray(logits),
                correct_table=np.asarray(correct),
                wrong_table=np.asarray(wrong),
                addition=addition,
            )
    return [c for c in cards if c is not None]


def _ab_tables(logits: np.ndarray, labels: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The correct logit Q_{ab,c(a,b)} and the largest wrong one max_{c' ≠ c(a,b), c' < p} Q_{abc'}
    as (p, p) tables indexed [a, b]: float32 each, from logits (p², V) and labels (p²,)."""
    rows = np.arange(p * p)
    correct = logits[rows, labels]
    wrong = logits[:, :p].copy()
    wrong[rows, labels] = -np.inf
    return correct.reshape(p, p), wrong.max(axis=1).reshape(p, p)


def compute_card(network: Network) -> Card:
    """:func:`compute_cards` of one network."""
    return compute_cards([network])[0]


# --------------------------------------------------------------------------------------------- #
# Figures


def _fmt(v: Any, spec: str = ".3f") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "nan" if not math.isfinite(f) else format(f, spec)


def header(card: Card) -> str:
    """One-line description of the network and its headline metrics (each figure's title)."""
    net, s = card.network, card.scalars
    arch = net.arch
    fam = family(arch)
    desc = f"{fam} p={arch.p} d_model={net.info.get('d_model', arch.d_model)}"
    if fam == "transformer":
        desc += f" layers={arch.n_layers} {arch.act} α={_fmt(net.attention_rate, '.2f')}"
    elif fam == "linearformer":
        desc += f" layers={arch.n_layers} {arch.act}"
    algo = s.get("algorithm", "?")
    if net.operation != ADDITION:
        desc += f" operation={net.operation}"
    di = "not defined (not addition)"
    if card.addition:
        wrong = _fmt(s["distance_irrelevance_largest_wrong"])
        di = f"{_fmt(s['distance_irrelevance'])} (largest wrong {wrong})"
    return (
        f"{net.name} · {desc} · {str(algo).upper()}\n"
        f"gradient symmetricity {_fmt(s['gradient_symmetricity'])} · distance irrelevance {di} · "
        f"circularity {_fmt(s['circularity'], '.4f')} · accuracy {_fmt(s['accuracy'], '.4f')}"
    )


def _text_panel(ax: plt.Axes, text: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11, transform=ax.transAxes)


def plot_embedding(card: Card, path: str) -> None:
    """The principal components in pairs, tokens as labelled points (see the module docstring)."""
    p = card.p
    a = card.arrays
    n = card.scores.shape[1]
    pairs = [(j, j + 1) for j in range(0, n - 1, 2)]
    cols = min(3, max(len(pairs), 1))
    rows = max(math.ceil(len(pairs) / cols), 1)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols, 4.8 * rows + 0.8), squeeze=False, layout="constrained"
    )
    font = 7 if p <= 61 else 5
    for ax in axes.ravel()[len(pairs) :]:
        ax.axis("off")
    t = np.arange(p)
    for ax, (i, j) in zip(axes.ravel(), pairs, strict=False):
        x, y = card.scores[:, i], card.scores[:, j]
        ki, kj = int(a["pc_frequency"][i]), int(a["pc_frequency"][j])
        di, dj = int(a["pc_delta"][i]), int(a["pc_delta"][j])
        circ = (float(a["pc_power"][i]), float(a["pc_power"][j]))
        var = float(a["pc_variance"][i] + a["pc_variance"][j])
        if ki == kj and ki > 0:
            order = (t * di) % p  # 0, δ, 2δ, …: neighbours on the circle
            ax.plot(np.append(x[order], x[order[0]]), np.append(y[order], y[order[0]]), color="0.8", lw=0.8)
            kd = f"k = {ki}, δ = {di}"
        else:
            kd = f"k = {ki} / {kj}, δ = {di} / {dj}"
        ax.scatter(x, y, c=t, cmap="twilight", vmin=0, vmax=p, s=26, edgecolors="k", linewidths=0.3)
        for tok in range(p):
            ax.annotate(str(tok), (x[tok], y[tok]), fontsize=font, xytext=(2, 2), textcoords="offset points")
        ax.set_title(
            f"PC{i + 1}–{j + 1}: {kd}\ncircularity {_fmt(np.mean(circ))} ({_fmt(circ[0])}, {_fmt(circ[1])})"
            f" · {100 * var:.1f}% of variance",
            fontsize=10,
        )
        ax.set_xlabel(f"PC{i + 1}")
        ax.set_ylabel(f"PC{j + 1}")
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
    ks = ", ".join(f"{c['k']} (δ {c['delta']})" for c in card.circles()) or "none"
    fig.suptitle(
        f"{header(card)}\nembedding of tokens 0…{p - 1} (first operand's table) on its principal "
        f"components · circles k: {ks}",
        fontsize=10,
    )
    save_figure(fig, path)


NOT_ADDITION_LOGITS = (
    "the (a + b, a − b) layout and distance irrelevance (SPEC §5.2) are defined for addition; "
    "this network's operation is {op}, so its logits are drawn indexed by (a, b)"
)
NOT_ADDITION_FITS = (
    "No Clock/Pizza template fits: the Clock, Pizza and accompanying templates (SPEC §5.5)\n"
    "are defined for addition, cos(w(a + b − c)); this network's operation is {op}."
)


def plot_logits(card: Card, path: str) -> None:
    """The correct and the largest wrong logit over ((a + b) mod p, (a − b) mod p), with their
    profiles along a − b (see the module docstring); indexed by (a, b) with profiles along b for
    a network of another operation than addition."""
    if not card.addition:
        _plot_logits_ab(card, path)
        return
    p = card.p
    s = card.scalars
    fig, axes = plt.subplots(
        2, 2, figsize=(12, 10.5), gridspec_kw={"height_ratios": [3, 1.3]}, squeeze=False, layout="constrained"
    )
    panels = (
        (card.correct_table, r"correct logit $Q_{ab,(a+b)}$", "distance_irrelevance"),
        (
            card.wrong_table,
            r"largest wrong logit $\max_{c \neq a+b}\, Q_{abc}$",
            "distance_irrelevance_largest_wrong",
        ),
    )
    d = np.arange(p)
    for col, (table, what, metric) in enumerate(panels):
        ax = axes[0, col]
        im = ax.imshow(table, origin="lower", cmap="viridis", aspect="equal", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        ax.set_title(f"{what}\ndistance irrelevance {_fmt(s[metric])}", fontsize=10)
        ax.set_xlabel("(a − b) mod p")
        ax.set_ylabel("(a + b) mod p")
        prof = axes[1, col]
        mean, std = table.mean(axis=0), table.std(axis=0)
        prof.fill_between(d, mean - std, mean + std, color="C0", alpha=0.25, label="± std over a + b")
        prof.plot(d, mean, color="C0", marker=".", label="mean over a + b")
        prof.set_xlim(-0.5, p - 0.5)
        prof.set_xlabel("(a − b) mod p")
        prof.set_ylabel("logit")
        prof.legend(fontsize=8, loc="best")
        prof.set_title(
            f"along a − b: spread of the column means {_fmt(np.std(mean))}, "
            f"mean spread down a column {_fmt(np.mean(std))}",
            fontsize=9,
        )
    fig.suptitle(
        f"{header(card)}\nlogits over (a + b, a − b): a Pizza's rows vary with a − b, a Clock's do not",
        fontsize=10,
    )
    save_figure(fig, path)


def _plot_logits_ab(card: Card, path: str) -> None:
    """The correct and the largest wrong logit of a network of another operation, as (p, p)
    heatmaps indexed by (a, b), with their profiles along b."""
    p = card.p
    fig, axes = plt.subplots(
        2, 2, figsize=(12, 10.5), gridspec_kw={"height_ratios": [3, 1.3]}, squeeze=False, layout="constrained"
    )
    panels = (
        (card.correct_table, r"correct logit $Q_{ab,f(a,b)}$"),
        (card.wrong_table, r"largest wrong logit $\max_{c \neq f(a,b)}\, Q_{abc}$"),
    )
    d = np.arange(p)
    for col, (table, what) in enumerate(panels):
        ax = axes[0, col]
        im = ax.imshow(table, origin="lower", cmap="viridis", aspect="equal", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        ax.set_title(f"{what}\ndistance irrelevance: not defined (not addition)", fontsize=10)
        ax.set_xlabel("b")
        ax.set_ylabel("a")
        prof = axes[1, col]
        mean, std = table.mean(axis=0), table.std(axis=0)
        prof.fill_between(d, mean - std, mean + std, color="C0", alpha=0.25, label="± std over a")
        prof.plot(d, mean, color="C0", marker=".", label="mean over a")
        prof.set_xlim(-0.5, p - 0.5)
        prof.set_xlabel("b")
        prof.set_ylabel("logit")
        prof.legend(fontsize=8, loc="best")
    note = NOT_ADDITION_LOGITS.format(op=card.network.operation)
    fig.suptitle(f"{header(card)}\nlogits over (a, b): {note}", fontsize=10)
    save_figure(fig, path)


def plot_fits(card: Card, path: str) -> None:
    """FVE of the Clock, Pizza and accompanying templates per isolated circle, and each isolated
    circle's accuracy per (a − b). For another operation than addition the FVE panel is
    replaced by the reason it is not drawn."""
    found = card.circles()
    s = card.scalars
    if not found:
        fig, ax = plt.subplots(figsize=(14, 2.4), layout="constrained")
        text = NO_CIRCLES
        if not card.addition:
            text += "\n" + NOT_ADDITION_FITS.format(op=card.network.operation)
        _text_panel(ax, text)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(14, 5.2), squeeze=False, layout="constrained")
        ax, acc_ax = axes[0]
        if card.addition:
            _plot_fve(ax, found)
        else:
            _text_panel(ax, NOT_ADDITION_FITS.format(op=card.network.operation))
        by_diff = card.arrays["circle_accuracy_by_difference"]
        p = card.p
        for i, c in enumerate(found):
            # a circle sees a − b through its angle 2πk(a − b)/p: order the differences by k(a − b)
            turn = (c["k"] * np.arange(p)) % p
            turn = np.where(turn > p // 2, turn - p, turn)
            order = np.argsort(turn)
            acc_ax.plot(turn[order], by_diff[i][order], marker=".", label=f"k={c['k']}")
        acc_ax.set_xlabel("k·(a − b) mod p, centred (the difference as a step around the circle)")
        acc_ax.set_ylabel("accuracy with only this circle kept")
        acc_ax.set_ylim(-0.03, 1.03)
        acc_ax.legend(fontsize=8)
        acc_ax.set_title(
            "isolated circles' accuracy per a − b · all circles together "
            f"{_fmt(s['circles_accuracy'], '.4f')}",
            fontsize=10,
        )
    fig.suptitle(header(card), fontsize=10)
    save_figure(fig, path)


def _plot_fve(ax: plt.Axes, found: list[dict[str, Any]]) -> None:
    """Bars of the Clock, Pizza and accompanying FVE of each isolated circle (addition only)."""
    x = np.arange(len(found))
    width = 0.27
    series = (
        ("fve_clock", "Clock", "C0"),
        ("fve_pizza", "Pizza", "C1"),
        ("fve_accompanying", "accompanying", "C2"),
    )
    lo = 0.0
    for o, (key, label, color) in enumerate(series):
        vals = np.asarray([c[key] for c in found], float)
        if not np.any(np.isfinite(vals)):
            continue
        pos = x + (o - 1) * width
        ax.bar(pos, np.nan_to_num(vals, nan=0.0), width, label=label, color=color)
        for xp, v in zip(pos, vals, strict=True):
            if np.isfinite(v):
                ax.text(xp, max(v, 0) + 0.02, f"{100 * v:.1f}", ha="center", fontsize=7, rotation=90)
        lo = min(lo, float(np.nanmin(vals)))
    ax.set_xticks(x)
    ax.set_xticklabels(
        [
            f"k={c['k']} (δ {c['delta']})\nacc {100 * c['accuracy']:.1f}%"
            + (f"\nwith k={c['accompanies']}" if c["accompanies"] else "")
            for c in found
        ],
        fontsize=8,
    )
    ax.set_ylim(min(lo - 0.05, 0), 1.4)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("FVE of the isolated circle's logits")
    ax.legend(fontsize=8, loc="upper right", ncol=3)
    ax.set_title(
        "logit fit per isolated circle (FVE in %, SPEC §5.5)\n"
        "FVE = 2ρ − 1: a template uncorrelated with the logits scores −100 % (e.g. the accompanying "
        "template, meant for a circle at 2k, on a main circle)",
        fontsize=9,
    )


def plot_training(card: Card, path: str) -> None:
    """Loss and accuracy against the optimizer step (logarithmic), or the reason there are none."""
    net = card.network
    h = net.history
    if h is None:
        fig, ax = plt.subplots(figsize=(13, 2.4), layout="constrained")
        _text_panel(ax, net.history_note.strip())
    else:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), squeeze=False, layout="constrained")
        step = np.asarray(h["step"], float)
        pos = step > 0  # a logarithmic axis has no step 0
        loss_ax, acc_ax = axes[0]
        for key, color in (("train_loss", "C0"), ("test_loss", "C1")):
            if key in h:
                loss_ax.plot(step[pos], np.asarray(h[key])[pos], color=color, label=key.replace("_", " "))
        loss_ax.set_xscale("log")
        loss_ax.set_yscale("log")
        loss_ax.set_xlabel("optimizer step")
        loss_ax.set_ylabel("cross-entropy")
        loss_ax.legend(fontsize=8)
        loss_ax.set_title(
            f"loss · final train {_fmt(net.info.get('train_loss'), '.3g')}, "
            f"test {_fmt(net.info.get('test_loss'), '.3g')}",
            fontsize=10,
        )
        for key, color in (("train_accuracy", "C0"), ("test_accuracy", "C1")):
            if key in h:
                acc_ax.plot(step[pos], np.asarray(h[key])[pos], color=color, label=key.replace("_", " "))
        for key, ls in (
            ("first_full_train_step", ":"),
            ("first_full_test_step", "--"),
            ("stopped_step", "-."),
        ):
            v = net.info.get(key)
            if v is not None and np.isfinite(float(v)) and float(v) > 0:
                label = f"{key.replace('_', ' ')} {int(v)}"
                acc_ax.axvline(float(v), color="0.4", ls=ls, lw=0.8, label=label)
        acc_ax.set_xscale("log")
        acc_ax.set_ylim(-0.02, 1.02)
        acc_ax.set_xlabel("optimizer step")
        acc_ax.set_ylabel("accuracy")
        acc_ax.legend(fontsize=8)
        acc_ax.set_title(
            f"accuracy · final train {_fmt(net.info.get('train_accuracy'), '.4f')}, "
            f"test {_fmt(net.info.get('test_accuracy'), '.4f')}",
            fontsize=10,
        )
    fig.suptitle(header(card), fontsize=10)
    save_figure(fig, path)


METRICS_FIRST = (
    "gradient_symmetricity",
    "distance_irrelevance",
    "distance_irrelevance_largest_wrong",
    "circularity",
    "algorithm_code",
    "n_circles",
    "circles_accuracy",
    "circle_frequency",
    "circle_fve_clock",
    "circle_fve_pizza",
    "train_accuracy",
    "test_accuracy",
    "train_loss",
    "test_loss",
)
"""Panels drawn first on the metrics-along-training figure (the rest follow alphabetically)."""


def plot_metrics_history(card: Card, path: str) -> None:
    """Every metric recorded along training (``metrics_history.npz``), one panel per metric;
    per-circle / per-component metrics as one line per slot (slots never used are not drawn;
    a metric with no value to draw says so in its panel)."""
    mh = card.network.metrics_history
    if mh is None:
        raise ValueError(f"{card.network.name}: no metrics recorded along training")
    step = np.asarray(mh["step"], float)
    present = [k for k in mh if k != "step"]
    names = [k for k in METRICS_FIRST if k in present and mh[k].ndim in (1, 2)]
    names += sorted(k for k in present if k not in names and mh[k].ndim in (1, 2))
    skipped = sorted(k for k in present if mh[k].ndim > 2)
    cols = 4
    rows = max(math.ceil(len(names) / cols), 1)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 2.9 * rows + 1), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names, strict=False):
        v = np.asarray(mh[name], float)
        ax.set_title(name, fontsize=9)
        if v.ndim == 1:
            if not np.any(np.isfinite(v)):
                _text_panel(ax, "NaN at every record")
                continue
            ax.plot(step, v, marker=".", color="C0")
        else:
            used = [j for j in range(v.shape[1]) if np.any(np.isfinite(v[:, j]) & (v[:, j] != 0))]
            if not used:
                _text_panel(ax, "0 or NaN in every slot at every record")
                continue
            for j in used:
                ax.plot(step, v[:, j], marker=".", lw=1, label=str(j + 1))
            if len(used) <= 6:
                ax.legend(fontsize=6, ncol=3, title="slot", title_fontsize=6)
        if name == "algorithm_code":
            ax.set_yticks(range(len(ALGORITHMS)), ALGORITHMS, fontsize=7)
            ax.set_ylim(-0.5, len(ALGORITHMS) - 0.5)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("optimizer step", fontsize=7)
    note = f" (not drawn: {', '.join(skipped)})" if skipped else ""
    fig.suptitle(f"{header(card)}\nevery metric along training{note}", fontsize=10)
    save_figure(fig, path)


def card_paths(name: str, out_dir: str) -> dict[str, str]:
    """The files of a card: figure name → PNG path (every name of :data:`FIGURES`), and
    ``json``."""
    out = {f: os.path.join(out_dir, f"{name}_{f}.png") for f in FIGURES}
    out["json"] = os.path.join(out_dir, f"{name}.json")
    return out


def write_card(card: Card, out_dir: str) -> dict[str, str]:
    """Draw every figure of ``card`` into ``out_dir`` (atomically) and its numbers as JSON.

    Returns:
        figure name → path of the files written (``metrics`` only when recorded), and ``json``.
    """
    paths = card_paths(card.network.name, out_dir)
    plots = {
        "embedding": plot_embedding,
        "logits": plot_logits,
        "fits": plot_fits,
        "training": plot_training,
    }
    if card.network.metrics_history is not None:
        plots["metrics"] = plot_metrics_history
    else:
        paths.pop("metrics")
        if os.path.exists(card_paths(card.network.name, out_dir)["metrics"]):
            os.remove(card_paths(card.network.name, out_dir)["metrics"])  # stale from an earlier run
    for name, plot in plots.items():
        plot(card, paths[name])
    store.write_json(paths["json"], card.numbers())
    return paths


def default_out_dir(folder: str) -> str:
    """Where ``phasespace show`` writes cards by default: ``<sweep>/cards`` for a sweep
    directory, ``runs/reference/cards`` for a checkpoint folder (never inside it)."""
    if is_sweep_dir(folder):
        return os.path.join(folder, "cards")
    return os.path.join("runs", "reference", "cards")
