"""Circuit analysis of whole populations: key frequencies and circles, circle isolation, logit
fits and classification (SPEC §5.4–5.7), on top of the core metrics of
:mod:`phasespace.analysis.network` (§5.1–5.3, §5.6).

Every metric is a pure per-network function (:func:`circuit_network`), ``jit(vmap(...))``-ed over
the run axis R (:func:`analyze_circuits`). :func:`analyze_full` runs both passes and the
classification, returning per-network scalars (the runs table) and per-network arrays (circle
tables, accuracy per (a − b)) — the one entry point for sweeps, metrics along training and
``phasespace analyze``. Works for every model family of :mod:`phasespace.models.registry`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phasespace.analysis import circles, classify, faults, metrics
from phasespace.analysis.network import analyze_population, over_networks
from phasespace.defaults import DI_METRICS, N_TRIPLES, TRIPLE_SEED
from phasespace.models.registry import Arch, embedding_tables, make_model, set_embedding_tables, shares_table
from phasespace.tasks import all_pairs


@dataclasses.dataclass(frozen=True)
class CircuitOptions:
    """Static options of the circuit analysis (the ``[analysis]`` table of a sweep spec).

    Attributes:
        n_components: leading principal components examined for key frequencies (SPEC §5.4).
        min_power: a component belongs to a circle only if its Fourier energy fraction at its
            key frequency is ≥ this.
        min_circle_components: components needed to form a circle (2: a cos/sin pair).
        di_metric: which distance irrelevance the classification uses: ``distance_irrelevance``
            (correct logit, paper Def. 4.2) or ``distance_irrelevance_largest_wrong`` (the
            published tables' variant).

    The label thresholds are not options of the circuit pass: :func:`analyze_full` reads them
    from the same ``[analysis]`` mapping (:func:`phasespace.analysis.classify.thresholds`).
    """

    n_components: int = 12
    min_power: float = 0.9
    min_circle_components: int = 2
    di_metric: str = "distance_irrelevance"

    def __post_init__(self) -> None:
        if self.n_components < 2:
            raise ValueError(f"n_components={self.n_components}: must be ≥ 2")
        if not 1 <= self.min_circle_components <= self.n_components:
            raise ValueError(
                f"min_circle_components={self.min_circle_components}: must be in [1, n_components]"
            )
        if self.di_metric not in DI_METRICS:
            raise ValueError(f"di_metric={self.di_metric!r}: must be one of {list(DI_METRICS)}")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> CircuitOptions:
        """Options from a mapping (e.g. a spec's ``[analysis]`` table); unknown keys ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in m.items() if k in names})

    def components(self, arch: Arch) -> int:
        """Number n of components examined: min(n_components, p, embedding width)."""
        width = embedding_tables_shape(arch)[1]
        return min(self.n_components, arch.p, width)

    def circle_slots(self, arch: Arch) -> int:
        """Number C of circle slots: n // min_circle_components."""
        return max(self.components(arch) // self.min_circle_components, 1)


def embedding_tables_shape(arch: Arch) -> tuple[int, int]:
    """(p, e): the shape of each operand embedding table of ``arch`` (at its bucket width)."""
    e = getattr(arch, "d_embed", arch.d_model)
    return arch.p, e


# --------------------------------------------------------------------------------------------- #
# One network


def isolated_logits(
    arch: Arch,
    params: Any,
    attention_rate: jax.Array,
    attn_scale: jax.Array,
    keep_a: jax.Array,
    keep_b: jax.Array | None = None,
) -> jax.Array:
    """Logits over all p² pairs of the network with only some principal components of its
    operand embedding table(s) kept (SPEC §5.5: inverse PCA, mean added back, every other weight
    unchanged).

    Args:
        arch, params: one network (no run axis).
        attention_rate, attn_scale: float32 scalars.
        keep_a: bool (n,): which of the n leading components of the first operand's table to
            keep (for a shared table, of the only table).
        keep_b: bool (n_b,): the same for the second operand's table when it is separate
            (separate vocabulary, α′); default: ``keep_a``.

    Returns:
        float32 (p², V) in :func:`~phasespace.tasks.all_pairs` order.
    """
    tokens, _ = all_pairs(arch.task)
    ta, tb = embedding_tables(arch, params)
    pa = metrics.pca(ta)
    pb = pa if shares_table(arch) else metrics.pca(tb)
    keep = (keep_a, keep_a if keep_b is None else keep_b)
    return apply_isolated(arch, params, pa, pb, keep, attention_rate, attn_scale, jnp.asarray(tokens))


def apply_isolated(
    arch: Arch,
    params: Any,
    pca_a: metrics.PCA,
    pca_b: metrics.PCA,
    keep: tuple[jax.Array, jax.Array],
    attention_rate: jax.Array,
    attn_scale: jax.Array,
    tokens: jax.Array,
) -> jax.Array:
    """The one circle isolation (SPEC §5.5): the network applied to ``tokens`` with its operand
    table(s) rebuilt from the kept components of their PCA (``keep`` = (first table's, second
    table's); a shared table uses the first) and every other weight unchanged."""
    a = circles.isolate(pca_a, keep[0])
    b = a if shares_table(arch) else circles.isolate(pca_b, keep[1])
    iso = set_embedding_tables(arch, params, a, b)
    return make_model(arch).apply(iso, tokens, attention_rate, attn_scale)


def circuit_network(
    arch: Arch,
    opts: CircuitOptions,
    params: Any,
    attention_rate: jax.Array,
    attn_scale: jax.Array,
    tokens: jax.Array,
    labels: jax.Array,
) -> dict[str, jax.Array]:
    """Key frequencies, circles, circle isolation and logit FVE of one network (SPEC §5.4–5.5).

    The circles are found in the first operand's table (tokens 0…p−1). Isolating a circle keeps
    its components in that table and, where the second operand has its own table (separate
    vocabulary, α′), the components of the same key frequency there.

    Args:
        arch: static architecture (may be a padded bucket width).
        opts: static options.
        params: one network's parameters.
        attention_rate, attn_scale: float32 scalars.
        tokens: the full table int32 (p², n_ctx).
        labels: int32 (p²,), this network's labels (its operation).

    The key frequencies and circles use the embeddings only, and the isolated circles' accuracies
    the network's own labels, for every operation. The Clock, Pizza and accompanying templates
    are defined for addition (their c-dependence is cos(w(a + b − c))): for labels other than
    (a + b) mod p the three FVEs are NaN (the ``not_addition`` flag of
    :data:`phasespace.analysis.faults.FLAGS`, recorded by :func:`analyze_full`'s ``degenerate``).

    Returns:
        dict, with n = :meth:`CircuitOptions.components` and C = :meth:`~CircuitOptions.circle_slots`:

        * ``pc_frequency``, ``pc_delta`` int32 (n,): key frequency min(k, p−k) and δ of each
          leading component of the first table; ``pc_power`` (n,) its Fourier energy fraction;
          ``pc_variance`` (n,) its share of the table's variance; ``pc_frequency_b`` (n,) key
          frequencies of the second operand's table (= ``pc_frequency`` for a shared table).
        * ``n_circles`` int32; ``circle_frequency``, ``circle_delta``, ``circle_components``
          int32 (C,) (k, δ and the number of components; 0 for empty slots);
          ``circle_variance`` (C,); ``circle_accompanies`` int32 (C,): k′ of the earlier circle
          this one accompanies (k ≡ ±2k′), 0 if none.
        * ``circle_accuracy`` (C,) and ``circle_accuracy_by_difference`` (C, p): accuracy of the
          network with only that circle kept, over all p² pairs and per (a − b) mod p.
        * ``circle_fve_clock``, ``circle_fve_pizza`` (C,): FVE of the isolated logits O[a, b, c]
          (c < p) by Q_clock and Q_pizza at the circle's k; ``circle_fve_accompanying`` (C,): by
          Q_acc at the accompanied circle's k (NaN if it accompanies none). NaN in empty slots.
        * ``circles_accuracy``: accuracy with all circles kept together (NaN with none);
          ``circularity_b``: circularity (SPEC §5.3) of the second operand's table.
    """
    found = find_circles(arch, opts, params)
    fits = isolate_circles(arch, params, found, attention_rate, attn_scale, tokens, labels)
    k, members, fa = found.frequency, found.members, found.keys_a
    present = jnp.arange(k.shape[0]) < found.count
    nan = jnp.float32(jnp.nan)
    out = {
        "pc_frequency": fa["frequency"],
        "pc_delta": fa["delta"],
        "pc_power": fa["power"],
        "pc_variance": fa["variance"],
        "pc_frequency_b": found.keys_b["frequency"],
        "n_circles": found.count,
        "circle_frequency": k,
        "circle_delta": circles.delta_of(k, arch.p),
        "circle_components": jnp.sum(members, axis=1).astype(jnp.int32),
        "circle_variance": jnp.sum(jnp.where(members, fa["variance"][None, :], 0.0), axis=1),
        "circle_accompanies": found.accompanies,
        "circle_accuracy": jnp.where(present, fits["accuracy"], nan),
        "circle_accuracy_by_difference": jnp.where(present[:, None], fits["accuracy_by_difference"], nan),
        "circle_fve_clock": jnp.where(present, fits["fve_clock"], nan),
        "circle_fve_pizza": jnp.where(present, fits["fve_pizza"], nan),
        "circle_fve_accompanying": jnp.where(
            present & (found.accompanies > 0), fits["fve_accompanying"], nan
        ),
        "circles_accuracy": jnp.where(found.count > 0, fits["all_accuracy"], nan),
        "circularity_b": metrics.circularity(found.table_b),
    }
    not_addition = (~faults.addition_labels(labels, arch.p)).astype(jnp.int32)
    flag = not_addition << faults.FLAGS.index("not_addition")
    return faults.nan_where_flagged(out, flag, only=("not_addition",))


class FoundCircles(NamedTuple):
    """The circles of one network's operand embedding tables (SPEC §5.4), from :func:`find_circles`.

    Attributes:
        pca_a, pca_b: the PCA of the first and second operand's table (the same for a shared one).
        keys_a, keys_b: their :func:`~phasespace.analysis.circles.key_frequencies` (n,).
        frequency: int32 (C,) key frequency of each circle slot (0: empty).
        members, members_b: bool (C, n): each circle's components in either table.
        count: int32, the number of circles.
        accompanies: int32 (C,) k′ of the earlier circle each accompanies (0: none).
        table_b: the second operand's table (p, e).
    """

    pca_a: metrics.PCA
    pca_b: metrics.PCA
    keys_a: dict[str, jax.Array]
    keys_b: dict[str, jax.Array]
    frequency: jax.Array
    members: jax.Array
    members_b: jax.Array
    count: jax.Array
    accompanies: jax.Array
    table_b: jax.Array


def find_circles(arch: Arch, opts: CircuitOptions, params: Any) -> FoundCircles:
    """Key frequencies and circles of one network (SPEC §5.4): found in the first operand's table;
    in a separate second table, the components of each circle's key frequency."""
    p, n, n_c = arch.p, opts.components(arch), opts.circle_slots(arch)
    shared = shares_table(arch)
    ta, tb = embedding_tables(arch, params)
    pa = metrics.pca(ta)
    fa = circles.key_frequencies(pa, p, n)
    if shared:
        pb, fb = pa, fa
    else:
        pb = metrics.pca(tb)
        fb = circles.key_frequencies(pb, p, n)
    k, members, count = circles.group_circles(
        fa["frequency"], fa["power"], n_c, opts.min_power, opts.min_circle_components
    )
    members_b = (
        members if shared else circles.members_by_frequency(k, fb["frequency"], fb["power"], opts.min_power)
    )
    return FoundCircles(pa, pb, fa, fb, k, members, members_b, count, circles.accompanied_frequency(k, p), tb)


def isolate_circles(
    arch: Arch,
    params: Any,
    found: FoundCircles,
    attention_rate: jax.Array,
    attn_scale: jax.Array,
    tokens: jax.Array,
    labels: jax.Array,
) -> dict[str, jax.Array]:
    """The network with only one circle kept, for each circle slot, and with all circles kept
    (SPEC §5.5): ``accuracy`` (C,), ``accuracy_by_difference`` (C, p), ``fve_clock``,
    ``fve_pizza``, ``fve_accompanying`` (C,) and ``all_accuracy`` (a scalar). Empty slots are
    computed too (fixed shapes); :func:`circuit_network` masks them."""
    p = arch.p

    def run(keep: tuple[jax.Array, jax.Array]) -> jax.Array:
        return apply_isolated(
            arch, params, found.pca_a, found.pca_b, keep, attention_rate, attn_scale, tokens
        )

    def one_circle(args):
        keep_a, keep_b, kc, km = args
        logits = run((keep_a, keep_b))
        acc = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        by_diff = circles.accuracy_by_difference(logits, labels, p)
        o = logits[:, :p].reshape(p, p, p)
        return (
            acc,
            by_diff,
            circles.logit_fve(o, circles.clock_logits(p, kc)),
            circles.logit_fve(o, circles.pizza_logits(p, kc)),
            circles.logit_fve(o, circles.accompanying_logits(p, km)),
        )

    acc, by_diff, fve_c, fve_p, fve_a = jax.lax.map(
        one_circle, (found.members, found.members_b, found.frequency, found.accompanies)
    )
    all_logits = run((jnp.any(found.members, axis=0), jnp.any(found.members_b, axis=0)))
    return {
        "accuracy": acc,
        "accuracy_by_difference": by_diff,
        "fve_clock": fve_c,
        "fve_pizza": fve_p,
        "fve_accompanying": fve_a,
        "all_accuracy": jnp.mean(jnp.argmax(all_logits, axis=-1) == labels),
    }


# --------------------------------------------------------------------------------------------- #
# Populations


@functools.lru_cache(maxsize=32)
def _compiled(arch: Arch, opts: CircuitOptions):
    fn = functools.partial(circuit_network, arch, opts)
    return jax.jit(over_networks(fn, (0, 0, 0, None, 0)))


def analyze_circuits(
    arch: Arch,
    params: Any,
    attention_rate: Any,
    attn_scale: Any,
    opts: CircuitOptions = CircuitOptions(),
    labels: Any = None,
) -> dict[str, np.ndarray]:
    """:func:`circuit_network` for R networks in one jitted, vmapped call.

    Args:
        arch: the bucket architecture; params: tree with leaves (R, ...);
        attention_rate, attn_scale: (R,) float32.
        labels: int32 (R, p²), each network's labels; None: addition for every network.

    Returns:
        dict of NumPy arrays with leading axis R (see :func:`circuit_network` for the rest).
    """
    tokens, add_labels = all_pairs(arch.task)
    n = len(np.asarray(attention_rate).reshape(-1))
    labels = np.broadcast_to(add_labels, (n, add_labels.shape[0])) if labels is None else labels
    with jax.default_matmul_precision("highest"):
        out = _compiled(arch, opts)(
            params,
            jnp.asarray(attention_rate, jnp.float32),
            jnp.asarray(attn_scale, jnp.float32),
            jnp.asarray(tokens),
            jnp.asarray(labels, jnp.int32),
        )
    return {k: np.asarray(v) for k, v in out.items()}


SCALAR_CIRCUIT_FIELDS = ("n_circles", "circles_accuracy", "circularity_b")
CIRCLE_COLUMN_FIELDS = {
    "k": "circle_frequency",
    "delta": "circle_delta",
    "components": "circle_components",
    "accompanies": "circle_accompanies",
    "accuracy": "circle_accuracy",
    "fve_clock": "circle_fve_clock",
    "fve_pizza": "circle_fve_pizza",
    "fve_accompanying": "circle_fve_accompanying",
}
"""Per-circle columns of the runs table: ``circle{i}_{name}`` ← ``field[:, i - 1]``."""


def circuit_columns(n_circle_columns: int) -> list[str]:
    """Runs-table columns added by :func:`analyze_full` besides the core metrics (scalars,
    classification, per circle)."""
    cols = [*SCALAR_CIRCUIT_FIELDS, "algorithm", "algorithm_code"]
    for i in range(1, n_circle_columns + 1):
        cols += [f"circle{i}_{name}" for name in CIRCLE_COLUMN_FIELDS]
    return cols


def analyze_full(
    arch: Arch,
    params: Any,
    hparams: Mapping[str, Any],
    analysis: Mapping[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every metric of R networks of one bucket: the core pass (:func:`analyze_population`),
    the circuit pass (:func:`analyze_circuits`) and the classification
    (:func:`phasespace.analysis.classify.algorithm`).

    Args:
        arch: bucket architecture; params: leaves (R, ...).
        hparams: ``attention_rate``, ``attn_scale`` (R,), ``train_mask`` (R, p²) and ``labels``
            (R, p²) int32, each network's labels (absent: addition for every network, the
            paper's task).
        analysis: options (a spec's ``[analysis]`` table): ``n_triples``, ``triple_seed``, the
            fields of :class:`CircuitOptions` and the label thresholds
            (:data:`phasespace.defaults.THRESHOLDS`); defaults where missing.

    Returns:
        ``(scalars, arrays)``: per-network scalars (R,) — every field of
        :func:`~phasespace.analysis.network.analyze_network`, ``n_circles``, ``circles_accuracy``,
        ``circularity_b``, ``circular`` (bool), ``algorithm_code`` (int) and ``algorithm``
        (str) and ``circle{i}_*`` columns (:data:`CIRCLE_COLUMN_FIELDS`; float, NaN for an empty
        slot and for ``accompanies`` when the circle accompanies none) — and per-network
        arrays (R, ...) of :func:`circuit_network` (``pc_*``, ``circle_*``).
    """
    analysis = dict(analysis or {})
    opts = CircuitOptions.from_mapping(analysis)
    core = analyze_population(
        arch,
        params,
        hparams["attention_rate"],
        hparams["attn_scale"],
        hparams["train_mask"],
        n_triples=int(analysis.get("n_triples", N_TRIPLES)),
        triple_seed=int(analysis.get("triple_seed", TRIPLE_SEED)),
        labels=hparams.get("labels"),
    )
    circ = analyze_circuits(
        arch, params, hparams["attention_rate"], hparams["attn_scale"], opts, hparams.get("labels")
    )
    scalars: dict[str, np.ndarray] = dict(core)
    for k in SCALAR_CIRCUIT_FIELDS:
        scalars[k] = circ[k]
    th = classify.thresholds(analysis)
    addition = (np.asarray(core["degenerate"]) >> faults.FLAGS.index("not_addition")) & 1 == 0
    code = classify.algorithm(
        core["circularity"], core["gradient_symmetricity"], core[opts.di_metric], **th, addition=addition
    )
    scalars["circular"] = classify.circular_mask(core["circularity"], th["circular_threshold"])
    scalars["algorithm_code"] = code
    scalars["algorithm"] = classify.algorithm_names(code)
    arrays = {k: v for k, v in circ.items() if k not in SCALAR_CIRCUIT_FIELDS}
    n_slots = circ["circle_frequency"].shape[1]
    for i in range(1, n_slots + 1):
        for name, field in CIRCLE_COLUMN_FIELDS.items():
            col = circ[field][:, i - 1]  # integer fields: 0 (empty slot, accompanies none) → NaN
            scalars[f"circle{i}_{name}"] = np.where(col != 0, col, np.nan) if col.dtype.kind in "iu" else col
    return scalars, arrays
