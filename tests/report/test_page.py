"""The sweep report: one self-contained report.html (figures inline, cards linked relatively), and,
where a Chromium binary is installed, the page rendered and driven in a real headless browser
(header clicks sort the table, a row click opens the network's card with its PNGs loaded)."""

from __future__ import annotations

import glob
import html.parser
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from phasespace.cli import main
from phasespace.io.store import read_csv

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class _Dom(html.parser.HTMLParser):
    """Tags with attributes, and the text of <script> / <table> cells, of a page."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.scripts: dict[str, str] = {}
        self._script: str | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "script":
            self._script = a.get("id", f"script{len(self.scripts)}")
            self.scripts[self._script] = ""

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self.scripts[self._script] += data


@pytest.fixture(scope="module")
def report(tiny_sweep):
    assert main(["report", str(tiny_sweep)]) == 0
    path = tiny_sweep / "report.html"
    dom = _Dom()
    dom.feed(path.read_text())
    return path, dom


def test_report_is_self_contained_and_complete(tiny_sweep, report):
    path, dom = report
    text = path.read_text()
    runs = read_csv(str(tiny_sweep / "runs.csv"))
    # no network access: nothing fetched from outside (no http(s) src/href, no external script)
    for tag, attrs in dom.tags:
        for k in ("src", "href"):
            assert not attrs.get(k, "").startswith(("http:", "https:", "//")), (tag, attrs)
    assert "<script src" not in text
    # aggregate figures embedded as base64 PNG, one per figures/*.png
    figs = sorted(glob.glob(str(tiny_sweep / "figures" / "*.png")))
    imgs = [a for t, a in dom.tags if t == "img"]
    assert figs and len([a for a in imgs if a.get("class") != "fit"]) == len(figs)
    assert len([a for a in imgs if a.get("class") == "fit"]) == 1  # the transition fits, one family
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    # spec, environment and the α* fits from phase.npz
    assert "tiny_report" in text and "environment.json" in text
    with np.load(tiny_sweep / "phase.npz") as z:
        statuses = {str(s) for k in z.files if k.endswith("__status") for s in z[k].ravel()}
    assert statuses and all(f">{s}<" in text for s in statuses)
    # one table row per network, each opening its card; the card's files exist beside the page
    rows = [a for t, a in dom.tags if t == "tr" and a.get("id", "").startswith("row-")]
    assert [r["id"] for r in rows] == [f"row-run{i}" for i in runs["index"]]
    cards = json.loads(dom.scripts["card-data"])
    assert set(cards) == {r["data-card"] for r in rows}
    for name, c in cards.items():
        assert set(c["figures"]) == {"embedding", "logits", "fits", "training", "metrics"}
        for rel in c["figures"].values():
            assert not os.path.isabs(rel)
            assert os.path.getsize(os.path.join(tiny_sweep, rel)) > 5000, (name, rel)


def test_report_without_cards(tiny_sweep, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tiny_sweep, d, ignore=shutil.ignore_patterns("cards", "report.html"))
    assert main(["report", str(d), "--no-cards"]) == 0
    dom = _Dom()
    dom.feed((d / "report.html").read_text())
    assert json.loads(dom.scripts["card-data"]) == {}
    assert not (d / "cards").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2


def _browser() -> str | None:
    for b in BROWSERS:
        path = shutil.which(b)
        if path:
            return path
    return None


HARNESS = """<!DOCTYPE html><html><body><pre id="out">pending</pre>
<iframe id="f" src="%s" width="1400" height="900"></iframe>
<script>
const f = document.getElementById('f');
f.addEventListener('load', function () {
  const d = f.contentDocument, out = {};
  const order = () => Array.from(d.querySelectorAll('#networks tbody tr')).map(r => r.id);
  const th = () => d.querySelector('#networks th[data-col="gradient_symmetricity"]');
  out.initial = order();
  out.card_hidden_before = d.getElementById('card').hidden;
  th().click();
  setTimeout(function () {
    out.asc = order(); out.aria_asc = th().getAttribute('aria-sort');
    th().click();
    setTimeout(function () {
      out.desc = order(); out.aria_desc = th().getAttribute('aria-sort');
      d.querySelector('#networks tbody tr:last-child td').click();
      setTimeout(function () {
        const c = d.getElementById('card');
        out.card_hidden = c.hidden; out.card_open = c.dataset.open || null;
        out.images = Array.from(c.querySelectorAll('img')).map(i => [i.dataset.figure, i.naturalWidth]);
        out.hash = f.contentWindow.location.hash;
        document.getElementById('out').textContent = JSON.stringify(out);
      }, 500);
    }, 200);
  }, 200);
});
</script></body></html>
"""


def test_report_in_headless_browser(tiny_sweep, report, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no Chromium binary found (looked for {', '.join(BROWSERS)}): page not rendered")
    page, _ = report
    harness = tmp_path / "harness.html"
    harness.write_text(HARNESS % page.as_uri())
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--allow-file-access-from-files",  # the harness reads the report's DOM in an iframe
            "--virtual-time-budget=10000",
            "--dump-dom",
            harness.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    start = proc.stdout.find('<pre id="out">')
    assert start >= 0, proc.stderr[-2000:]
    body = proc.stdout[start + len('<pre id="out">') : proc.stdout.find("</pre>", start)]
    out = json.loads(html.unescape(body))
    runs = read_csv(str(tiny_sweep / "runs.csv"))
    names = [f"row-run{i}" for i in runs["index"]]
    assert out["initial"] == names and out["card_hidden_before"] is True
    gs = runs["gradient_symmetricity"]
    assert out["asc"] == [names[i] for i in np.argsort(gs, kind="stable")]
    assert out["desc"] == out["asc"][::-1]
    assert (out["aria_asc"], out["aria_desc"]) == ("ascending", "descending")
    opened = out["desc"][-1].removeprefix("row-")
    assert out["card_hidden"] is False and out["card_open"] == opened
    assert f"card={opened}" in out["hash"] and "sort=gradient_symmetricity" in out["hash"]
    figures = dict(out["images"])
    assert set(figures) == {"embedding", "logits", "fits", "training", "metrics"}
    assert all(w > 100 for w in figures.values()), figures  # the card's PNGs loaded


def test_report_screenshot(report, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no Chromium binary found (looked for {', '.join(BROWSERS)}): no screenshot")
    page, _ = report
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
         "--window-size=1400,2000", page.as_uri() + "#card=run0"],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    from PIL import Image

    with Image.open(shot) as im:
        a = np.asarray(im.convert("L"))
    assert a.shape == (2000, 1400)
    assert (a < 200).mean() > 0.02  # something was drawn (text, tables, the open card's figures)
