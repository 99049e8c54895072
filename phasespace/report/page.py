"""The sweep report (``phasespace report DIR``): one self-contained ``DIR/report.html``.

The page holds, with no network access needed (styles, script and figures inline; figures as
base64 PNG):

* the spec (``spec.json``, and ``spec.toml`` as given) and the environment (``environment.json``);
* the phase tables from ``phase.npz``: α* per family and width bin with every field of its fit
  (``transition__*``: α*, standard error, status, counts, slope, intercept, p-value), the binned
  statistics (``binned__*``: mean ± std per width × attention-rate bin) and the grid means over
  seeds (``<metric>__mean`` over ``axes_reduced``);
* the aggregate figures (``figures/*.png``);
* a table of networks (one row per ``runs.csv`` row) sortable by any column (click its header),
  where clicking a row opens that network's card: its numbers (circles, FVEs, its ``runs.csv``
  row) and its PNGs from ``DIR/cards/`` (:mod:`phasespace.report.card`, linked relatively, so the
  page works wherever the sweep directory is copied).

The page's state lives in the URL fragment — ``#sort=<column>:<asc|desc>&card=<name>`` — so a
sorted view or an open card can be linked to (a header or row click only changes the fragment).
"""

from __future__ import annotations

import base64
import datetime
import glob
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phasespace.io import store
from phasespace.phase import diagram
from phasespace.report import card as cards

REPORT_FILE = "report.html"
CARDS_DIR = "cards"

NETWORK_COLUMNS = (
    "algorithm",
    "train_accuracy",
    "test_accuracy",
    "gradient_symmetricity",
    "distance_irrelevance",
    "distance_irrelevance_largest_wrong",
    "circularity",
    "n_circles",
    "circles",
    "circles_accuracy",
    "circle1_fve_clock",
    "circle1_fve_pizza",
    "param_norm",
    "train_loss",
    "test_loss",
    "first_full_train_step",
    "first_full_test_step",
    "collapsed",
    "degenerate",
)
"""Metric columns of the networks table (those present), after ``index`` and the axes that vary;
``circles`` lists each network's circle key frequencies k."""

AXIS_COLUMNS = (
    "model",
    "p",
    "n_layers",
    "n_heads",
    "act",
    "diff_vocab",
    "eqn_sign",
    "d_model",
    "attention_rate",
    "lr",
    "weight_decay",
    "train_fraction",
    "seed",
    "data_seed",
)
"""Hyperparameter columns shown in the networks table when they vary between networks."""


# --------------------------------------------------------------------------------------------- #
# Cards


def _card_fresh(folder: str, name: str, reference_mtime: float) -> bool:
    paths = cards.card_paths(name, os.path.join(folder, CARDS_DIR))
    need = [paths[k] for k in ("json", "embedding", "logits", "fits", "training")]
    return all(os.path.exists(p) and os.path.getmtime(p) >= reference_mtime for p in need)


def build_cards(folder: str, rebuild: bool = False, chunk: int = 32) -> list[str]:
    """Draw the card of every network of a sweep into ``DIR/cards`` (cards newer than
    ``runs.csv`` and the saved parameters are kept unless ``rebuild``).

    Returns:
        The names of the cards drawn now.
    """
    table = store.read_csv(os.path.join(folder, "runs.csv"))
    files = [os.path.join(folder, "runs.csv"), *glob.glob(os.path.join(folder, "params", "*.npz"))]
    newest = max(os.path.getmtime(p) for p in files)
    stale = [
        int(i)
        for i in table["index"]
        if rebuild or not _card_fresh(folder, cards.sweep_run_name(int(i)), newest)
    ]
    drawn: list[str] = []
    if not stale:
        return drawn
    out = os.path.join(folder, CARDS_DIR)
    for nets in cards.iter_sweep_networks(folder, stale):
        for start in range(0, len(nets), chunk):
            for c in cards.compute_cards(nets[start : start + chunk]):
                cards.write_card(c, out)
                drawn.append(c.network.name)
    return drawn


def _card_entry(folder: str, name: str) -> dict[str, Any] | None:
    """What the page shows of a card: its numbers (``<name>.json``) and the relative paths of
    its PNGs; None when the card has not been drawn."""
    paths = cards.card_paths(name, os.path.join(folder, CARDS_DIR))
    if not os.path.exists(paths["json"]):
        return None
    with open(paths["json"]) as f:
        numbers = json.load(f)
    figs = {
        k: f"{CARDS_DIR}/{os.path.basename(p)}" for k, p in paths.items() if k != "json" and os.path.exists(p)
    }
    return {
        "metrics": {
            k: numbers["metrics"].get(k)
            for k in (
                "algorithm",
                "gradient_symmetricity",
                "distance_irrelevance",
                "distance_irrelevance_largest_wrong",
                "circularity",
                "accuracy",
                "circles_accuracy",
            )
        },
        "circles": numbers["circles"],
        "components": numbers["components"],
        "history": numbers.get("history", ""),
        "figures": figs,
    }


# --------------------------------------------------------------------------------------------- #
# HTML pieces


def _finite(x: Any) -> Any:
    """``x`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt_value(v: Any) -> str:
    """A table cell's text: 4 significant digits for floats, ``—`` for NaN."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return "—"
        if f.is_integer() and abs(f) < 1e6:
            return str(int(f))
        return f"{f:.4g}"
    return str(v)


def _sort_value(v: Any) -> str:
    """The ``data-v`` of a cell: a number as text (``""`` for NaN, sorted last) or the text."""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, float, np.integer, np.floating)):
        f = float(v)
        return repr(f) if math.isfinite(f) else ""
    return str(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(fmt_value(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _png_data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _bin_labels(phase: Mapping[str, np.ndarray], dim: str) -> list[str]:
    """Readable names of the bins of ``dim`` (:func:`phasespace.phase.diagram.bin_label`)."""
    n = len(phase[f"edges__{dim}"]) - 1
    return [diagram.bin_label(phase, dim, i) for i in range(n)]


def _families(phase: Mapping[str, np.ndarray]) -> list[str]:
    return [str(x) for x in phase.get("coord__family", np.asarray(["all"]))]


def transition_section(phase: Mapping[str, np.ndarray]) -> str:
    """α* per family and width bin with every field of its fit (``transition__*`` arrays)."""
    keys = [k for k in phase if k.startswith("transition__")]
    if not keys:
        return "<p>No transition fits in phase.npz.</p>"
    combos: dict[tuple[str, str], list[str]] = {}
    for k in keys:
        parts = k.split("__")
        if len(parts) != 4:
            continue
        combos.setdefault((parts[1], parts[2]), []).append(parts[3])
    order = ["alpha_star", "se", "status", "n", "n_positive", "n_skipped", "slope", "intercept", "p_value"]
    fields = sorted(
        {f for fs in combos.values() for f in fs},
        key=lambda f: (f not in order, order.index(f) if f in order else 0, f),
    )
    labels = _bin_labels(phase, "d_model_bin") if "edges__d_model_bin" in phase else []
    out = []
    skip = diagram.families_without_alpha(phase)
    for g, fam in enumerate(_families(phase)):
        if g in skip:
            continue
        rows = []
        for b, lab in enumerate(labels):
            for subset, label in sorted(combos):
                row: list[Any] = [lab, subset, label]
                for f in fields:
                    key = f"transition__{subset}__{label}__{f}"
                    row.append(phase[key][g, b] if key in phase else "")
                rows.append(row)
        out.append(f"<h4>family {_esc(fam)}</h4>")
        out.append(_table(["d_model bin", "subset", "label", *fields], rows, "phase transition"))
        png = transition_figure(phase, g)
        if png is not None:
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            out.append(
                f'<figure><img class="fit" alt="transition fits, family {g}" src="{uri}"><figcaption>'
                "fraction of networks with each label per α bin (marker area ∝ count) and the "
                "logistic fit; dashed: α*</figcaption></figure>"
            )
    if skip:
        fams = _families(phase)
        out.append(f"<p>{_esc(diagram.NO_ALPHA_NOTE)}</p><ul>")
        out.extend(f"<li>family {_esc(fams[g])}</li>" for g in skip)
        out.append("</ul>")
    return "\n".join(out)


def transition_figure(phase: Mapping[str, np.ndarray], g: int) -> bytes | None:
    """PNG of the transition fits of family ``g``: per label (row) and subset (column), the
    fraction of networks with the label per attention-rate bin (one line per width bin, marker
    area ∝ count) and the fitted logistic curve P = 1/(1 + exp(−(intercept + slope·α))) with α*
    marked (the midpoint for a separable bin); None without transitions or binned fractions."""
    combos = sorted(
        {
            tuple(k.split("__")[1:3])
            for k in phase
            if k.startswith("transition__") and k.endswith("__status") and len(k.split("__")) == 4
        }
    )
    combos = [c for c in combos if f"binned__{c[0]}__{c[1]}__mean" in phase]
    if not combos:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = list(dict.fromkeys(c[0] for c in combos))
    labels = list(dict.fromkeys(c[1] for c in combos))
    x = np.asarray(phase["coord__attention_rate_bin"], float)
    w_lab = _bin_labels(phase, "d_model_bin")
    grid = np.linspace(0, 1, 201)
    fig, axes = plt.subplots(
        len(labels), len(subsets), figsize=(5.2 * len(subsets), 2.9 * len(labels)), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for i, label in enumerate(labels):
        for j, subset in enumerate(subsets):
            ax = axes[i, j]
            ax.set_title(f"{subset}: P({label})", fontsize=9)
            if (subset, label) not in combos:
                ax.axis("off")
                continue
            frac = phase[f"binned__{subset}__{label}__mean"][g]
            count = phase[f"binned__{subset}__{label}__count"][g]
            pre = f"transition__{subset}__{label}__"
            for b, wl in enumerate(w_lab):
                color = f"C{b % 10}"
                ok = count[b] > 0
                status = str(phase[pre + "status"][g, b])
                a_star = float(phase[pre + "alpha_star"][g, b])
                text = f"d {wl}: {status}" + (f", α* {a_star:.3f}" if np.isfinite(a_star) else "")
                if np.any(ok):
                    ax.scatter(x[ok], frac[b][ok], s=12 + 4 * count[b][ok], color=color, alpha=0.7)
                    ax.plot(x[ok], frac[b][ok], color=color, lw=0.6, alpha=0.5)
                b0, b1 = (float(phase[pre + f][g, b]) for f in ("intercept", "slope"))
                if status == "fitted" and np.isfinite(b0) and np.isfinite(b1):
                    ax.plot(grid, 1 / (1 + np.exp(-(b0 + b1 * grid))), color=color, lw=1.5, label=text)
                else:
                    ax.plot([], [], color=color, lw=1.5, ls=":", label=text)
                if np.isfinite(a_star):
                    ax.axvline(a_star, color=color, ls="--", lw=0.8)
            ax.set_xlim(-0.03, 1.03)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("attention rate α", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def binned_section(phase: Mapping[str, np.ndarray]) -> str:
    """Binned statistics (``binned__<subset>__<metric>__<stat>``): mean ± std (count) per
    width bin × attention-rate bin, one table per family and subset."""
    keys = [k.split("__") for k in phase if k.startswith("binned__")]
    subsets = sorted({k[1] for k in keys if len(k) == 4})
    if not subsets:
        return "<p>No binned statistics in phase.npz.</p>"
    metrics = list(dict.fromkeys(k[2] for k in keys if len(k) == 4))
    w_lab = _bin_labels(phase, "d_model_bin")
    a_lab = _bin_labels(phase, "attention_rate_bin")
    out = []
    for g, fam in enumerate(_families(phase)):
        for subset in subsets:
            rows = []
            for b, wl in enumerate(w_lab):
                for a, al in enumerate(a_lab):
                    cells: list[Any] = [wl, al]
                    for m in metrics:
                        pre = f"binned__{subset}__{m}__"
                        if f"{pre}mean" not in phase:
                            cells.append("")
                            continue
                        mean, std = phase[f"{pre}mean"][g, b, a], phase[f"{pre}std"][g, b, a]
                        n = phase[f"{pre}count"][g, b, a]
                        cells.append(f"{fmt_value(mean)} ± {fmt_value(std)} ({int(n)})")
                    rows.append(cells)
            out.append(
                f"<details{' open' if subset == 'all' else ''}><summary>family {_esc(fam)} · "
                f"subset <b>{_esc(subset)}</b></summary>"
                + _table(["d_model bin", "α bin", *metrics], rows, "phase binned")
                + "</details>"
            )
    return "\n".join(out)


def grid_section(phase: Mapping[str, np.ndarray]) -> str:
    """The grid means over seeds (``<metric>__mean``, ``__std``, ``__count`` over
    ``axes_reduced``)."""
    if "axes_reduced" not in phase:
        return ""
    axes = [str(a) for a in phase["axes_reduced"]]
    metrics = [
        k[: -len("__mean")]
        for k in phase
        if k.endswith("__mean") and "__" not in k[: -len("__mean")] and not k.startswith("coord")
    ]
    if not metrics or not axes:
        return ""
    coords = [np.asarray(phase[f"coord__{a}"]) for a in axes]
    rows = []
    for idx in np.ndindex(*[len(c) for c in coords]):
        row: list[Any] = [c[i] for c, i in zip(coords, idx, strict=True)]
        for m in metrics:
            mean, std, n = (phase[f"{m}__{s}"][idx] for s in ("mean", "std", "count"))
            row.append(f"{fmt_value(mean)} ± {fmt_value(std)} ({int(n)})")
        rows.append(row)
    return "<h3>Grid: mean ± std over seeds (count)</h3>" + _table([*axes, *metrics], rows, "phase grid")


def _circles_text(runs: Mapping[str, np.ndarray], r: int) -> str:
    ks = []
    for i in range(1, 65):
        col = f"circle{i}_k"
        if col not in runs:
            break
        k = runs[col][r]
        if np.isfinite(float(k)) and int(k) > 0:
            ks.append(str(int(k)))
    return ", ".join(ks)


def network_columns(runs: Mapping[str, np.ndarray]) -> list[str]:
    """Columns of the networks table: ``index``, the axes of :data:`AXIS_COLUMNS` that vary, the
    metrics of :data:`NETWORK_COLUMNS` present."""
    cols = ["index"]
    for a in AXIS_COLUMNS:
        if a in runs and len({str(v) for v in runs[a]}) > 1:
            cols.append(a)
    for m in NETWORK_COLUMNS:
        if m in runs or (m == "circles" and "circle1_k" in runs):
            cols.append(m)
    return cols


def networks_table(runs: Mapping[str, np.ndarray], has_card: Mapping[int, bool]) -> str:
    """The sortable networks table (``<table id="networks">``): one ``<tr data-card=name>`` per
    network, each cell with its sort key in ``data-v``."""
    cols = network_columns(runs)
    head = "".join(
        f'<th data-col="{_esc(c)}" title="sort by {_esc(c)}">{_esc(c.replace("_", " "))}</th>' for c in cols
    )
    body = []
    for r, index in enumerate(runs["index"]):
        name = cards.sweep_run_name(int(index))
        cells = []
        for c in cols:
            v = _circles_text(runs, r) if c == "circles" else runs[c][r]
            if isinstance(v, np.generic):
                v = v.item()
            cls = f' class="algo-{_esc(v)}"' if c == "algorithm" else ""
            cells.append(f'<td data-v="{_esc(_sort_value(v))}"{cls}>{_esc(fmt_value(v))}</td>')
        card_attr = f' data-card="{_esc(name)}"' if has_card.get(int(index)) else ""
        body.append(f'<tr id="row-{_esc(name)}"{card_attr}>{"".join(cells)}</tr>')
    return (
        f'<table id="networks" class="networks"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _spec_section(folder: str, spec: Mapping[str, Any]) -> str:
    parts = []
    toml = os.path.join(folder, "spec.toml")
    if os.path.exists(toml):
        with open(toml) as f:
            parts.append(f"<h3>spec.toml (as given)</h3><pre>{_esc(f.read())}</pre>")
    parts.append(
        "<details><summary>spec.json (resolved: every default filled in)</summary>"
        f"<pre>{_esc(json.dumps(spec, indent=1, sort_keys=True))}</pre></details>"
    )
    return "\n".join(parts)


def _environment_section(env: Mapping[str, Any]) -> str:
    if not env:
        return "<p>No environment.json.</p>"
    rows = [
        (k, v)
        for k, v in sorted(env.items())
        if not isinstance(v, (dict, list))
        or (isinstance(v, list) and len(v) <= 8 and not any(isinstance(x, (dict, list)) for x in v))
    ]
    versions = env.get("versions") or {}
    rows += [(f"version of {k}", v) for k, v in sorted(versions.items())]
    return (
        _table(
            ["field", "value"],
            [(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in rows],
            "kv",
        )
        + "<details><summary>environment.json (all of it)</summary>"
        f"<pre>{_esc(json.dumps(env, indent=1, sort_keys=True))}</pre></details>"
    )


def _figures_section(folder: str) -> str:
    paths = sorted(glob.glob(os.path.join(folder, "figures", "*.png")))
    if not paths:
        return "<p>No figures (figures/*.png).</p>"
    return "\n".join(
        f'<figure><img alt="{_esc(os.path.basename(p))}" src="{_png_data_uri(p)}">'
        f"<figcaption>{_esc(os.path.basename(p))}</figcaption></figure>"
        for p in paths
    )


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2em 2em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:12px;margin:.4em 0}
table.kv td{text-align:left;white-space:normal}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}
table.networks th{cursor:pointer;user-select:none}
table.networks th[aria-sort=ascending]::after{content:" ▲"}
table.networks th[aria-sort=descending]::after{content:" ▼"}
table.networks tr[data-card]{cursor:pointer}table.networks tr[data-card]:hover{background:#eef5ff}
table.networks tr.selected{background:#ffe9a8}
.algo-pizza{color:#c45a00;font-weight:600}.algo-clock{color:#1f5fb4;font-weight:600}
pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:30em;font-size:12px}
figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:12px;color:#555}.scroll{overflow:auto;max-height:40em}
#card{position:fixed;inset:3% 3%;background:#fff;border:2px solid #555;box-shadow:0 0 30px #0006;
overflow:auto;padding:1em 1.5em;z-index:10}
#card[hidden]{display:none}#card img{max-width:100%;display:block;margin:.5em 0;border:1px solid #ddd}
#card .close{position:sticky;top:0;float:right;font-size:1.2em;cursor:pointer}
"""

SCRIPT = r"""
(function () {
  const cards = JSON.parse(document.getElementById('card-data').textContent);
  const table = document.getElementById('networks');
  const tbody = table.tBodies[0];
  const original = Array.from(tbody.rows);
  const panel = document.getElementById('card');

  function state() {
    const s = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (kv) {
      const i = kv.indexOf('=');
      if (i > 0) s[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1));
    });
    return s;
  }
  function setState(s) {
    const parts = [];
    Object.keys(s).forEach(function (k) { if (s[k]) parts.push(k + '=' + encodeURIComponent(s[k])); });
    location.hash = parts.join('&');
  }
  function key(td) {
    const v = td.getAttribute('data-v');
    if (v === '') return null;
    const f = Number(v);
    return Number.isNaN(f) ? v : f;
  }
  function sortRows(col, dir) {
    const ths = Array.from(table.tHead.rows[0].cells);
    const j = ths.findIndex(function (th) { return th.dataset.col === col; });
    ths.forEach(function (th) { th.removeAttribute('aria-sort'); });
    let rows = original.slice();
    if (j >= 0) {
      const sign = dir === 'desc' ? -1 : 1;
      rows.sort(function (a, b) {
        const x = key(a.cells[j]), y = key(b.cells[j]);
        if (x === null || y === null) return (x === null) - (y === null);  // empty last
        if (typeof x === 'number' && typeof y === 'number') return sign * (x - y);
        return sign * String(x).localeCompare(String(y), undefined, {numeric: true});
      });
      ths[j].setAttribute('aria-sort', dir === 'desc' ? 'descending' : 'ascending');
      table.dataset.sorted = col + ':' + (dir === 'desc' ? 'desc' : 'asc');
    } else {
      delete table.dataset.sorted;
    }
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c];
    });
  }
  function num(v, d) {
    if (v === null || v === undefined || (typeof v === 'number' && !isFinite(v))) return '—';
    return typeof v === 'number' ? v.toFixed(d === undefined ? 4 : d) : esc(v);
  }
  function openCard(name) {
    original.forEach(function (r) { r.classList.toggle('selected', r.dataset.card === name); });
    const c = cards[name];
    if (!c) { panel.hidden = true; delete panel.dataset.open; return; }
    let h = '<span class="close" title="close" id="card-close">✕</span>';
    h += '<h2>network ' + esc(name) + ' · ' + esc(c.metrics.algorithm) + '</h2>';
    h += '<p>gradient symmetricity ' + num(c.metrics.gradient_symmetricity) +
         ' · distance irrelevance ' + num(c.metrics.distance_irrelevance) +
         ' (largest wrong ' + num(c.metrics.distance_irrelevance_largest_wrong) + ')' +
         ' · circularity ' + num(c.metrics.circularity) + ' · accuracy ' + num(c.metrics.accuracy) +
         ' · all circles kept: accuracy ' + num(c.metrics.circles_accuracy) + '</p>';
    h += '<table class="circles"><thead><tr><th>circle</th><th>k</th><th>δ</th><th>components</th>' +
         '<th>variance</th><th>accompanies</th><th>accuracy alone</th><th>FVE clock</th>' +
         '<th>FVE pizza</th><th>FVE accompanying</th></tr></thead><tbody>';
    c.circles.forEach(function (x, i) {
      h += '<tr><td>' + (i + 1) + '</td><td>' + x.k + '</td><td>' + x.delta + '</td><td>' +
           x.components + '</td><td>' + num(x.variance, 3) + '</td><td>' + (x.accompanies || '') +
           '</td><td>' + num(x.accuracy, 3) + '</td><td>' + num(x.fve_clock, 3) + '</td><td>' +
           num(x.fve_pizza, 3) + '</td><td>' + num(x.fve_accompanying, 3) + '</td></tr>';
    });
    if (!c.circles.length) h += '<tr><td colspan="10">no circles</td></tr>';
    h += '</tbody></table>';
    if (c.history && c.history !== 'recorded') h += '<p><i>' + esc(c.history) + '</i></p>';
    ['embedding', 'logits', 'fits', 'training', 'metrics'].forEach(function (f) {
      if (c.figures[f]) h += '<img class="card-figure" data-figure="' + f + '" alt="' + esc(name + ' ' + f) +
                             '" src="' + esc(c.figures[f]) + '">';
    });
    panel.innerHTML = h;
    panel.hidden = false;
    panel.dataset.open = name;
    document.getElementById('card-close').onclick = function () {
      const s = state(); delete s.card; setState(s);
    };
  }
  function apply() {
    const s = state();
    const sort = (s.sort || '').split(':');
    sortRows(sort[0], sort[1]);
    if (s.card) openCard(s.card); else {
      panel.hidden = true; delete panel.dataset.open;
      original.forEach(function (r) { r.classList.remove('selected'); });
    }
  }
  table.tHead.addEventListener('click', function (e) {
    const th = e.target.closest('th');
    if (!th) return;
    const s = state();
    const cur = (s.sort || '').split(':');
    s.sort = th.dataset.col + ':' + (cur[0] === th.dataset.col && cur[1] !== 'desc' ? 'desc' : 'asc');
    setState(s);
  });
  tbody.addEventListener('click', function (e) {
    const tr = e.target.closest('tr');
    if (!tr || !tr.dataset.card) return;
    const s = state(); s.card = tr.dataset.card; setState(s);
  });
  document.addEventListener('keydown', function (e) {
    if (e.key === 'Escape') { const s = state(); delete s.card; setState(s); }
  });
  window.addEventListener('hashchange', apply);
  apply();
})();
"""


def render_report(folder: str) -> str:
    """The HTML of the report of sweep ``folder`` (cards as already drawn in ``DIR/cards``)."""
    sweep = store.load_sweep(folder)
    runs = sweep.runs
    name = sweep.spec.get("name") or os.path.basename(os.path.normpath(folder))
    n = len(runs["index"])
    entries: dict[str, Any] = {}
    has_card: dict[int, bool] = {}
    for i in runs["index"]:
        nm = cards.sweep_run_name(int(i))
        e = _card_entry(folder, nm)
        if e is not None:
            entries[nm] = e
        has_card[int(i)] = e is not None
    algo = runs.get("algorithm")
    counts = ""
    if algo is not None:
        u, c = np.unique(np.asarray(algo, str), return_counts=True)
        counts = " · ".join(f"{k}: {v}" for k, v in zip(u, c, strict=True))
    phase = sweep.phase
    card_note = (
        f"{len(entries)} of {n} networks have a card (click a row to open it; Esc or ✕ closes it)."
        if entries
        else "No cards drawn (run <code>phasespace report</code> without <code>--no-cards</code>)."
    )
    data = json.dumps(_finite(entries), allow_nan=False, default=str).replace("</", "<\\/")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        f"<h1>phasespace sweep report: {_esc(name)}</h1>",
        f"<p>{n} networks · {_esc(counts)} · directory <code>{_esc(os.path.abspath(folder))}</code> · "
        f"written {now}</p>",
        '<nav><a href="#s-spec">spec</a> · <a href="#s-env">environment</a> · '
        '<a href="#s-phase">phase tables</a> · <a href="#s-figures">figures</a> · '
        '<a href="#s-networks">networks</a></nav>',
        '<h2 id="s-spec">Spec</h2>',
        _spec_section(folder, sweep.spec),
        '<h2 id="s-env">Environment</h2>',
        _environment_section(sweep.environment),
        '<h2 id="s-phase">Phase tables</h2>',
        "<h3>Transition attention rate α* per width bin (logistic regression of each label on α)</h3>",
        transition_section(phase),
        "<h3>Binned statistics: mean ± std (count) per width × attention-rate bin</h3>",
        '<div class="scroll">' + binned_section(phase) + "</div>",
        '<div class="scroll">' + grid_section(phase) + "</div>",
        '<h2 id="s-figures">Aggregate figures</h2>',
        _figures_section(folder),
        '<h2 id="s-networks">Networks</h2>',
        f"<p>Click a column header to sort by it (again to reverse). {card_note}</p>",
        '<div class="scroll">' + networks_table(runs, has_card) + "</div>",
        '<div id="card" hidden></div>',
        f'<script type="application/json" id="card-data">{data}</script>',
        f"<script>{SCRIPT}</script>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>phasespace report: {_esc(name)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def write_report(folder: str, draw_cards: bool = True, rebuild_cards: bool = False) -> str:
    """Draw the cards (unless ``draw_cards`` is False; see :func:`build_cards`) and write
    ``DIR/report.html`` atomically.

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: ``folder`` is not a finished sweep directory.
    """
    if not os.path.exists(os.path.join(folder, "runs.csv")):
        raise FileNotFoundError(f"{folder}: no runs.csv; not a finished sweep directory")
    if draw_cards:
        build_cards(folder, rebuild=rebuild_cards)
    path = os.path.join(folder, REPORT_FILE)
    store.write_text(path, render_report(folder))
    return path
