"""Network cards: the numbers on the paper's two reference models, the heatmaps against a direct
gather of the logit table, and every PNG written (reference checkpoints and a sweep's rows)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from phasespace.cli import main
from phasespace.io.store import read_csv
from phasespace.models.registry import make_model
from phasespace.report import card as C
from phasespace.tasks import all_pairs

MODEL_A, MODEL_B = "p99zdpze5l", "l8k1hzciux"


@pytest.fixture(scope="module")
def ref_cards(reference_dir):
    nets = [C.load_reference_network(reference_dir, r) for r in (MODEL_A, MODEL_B)]
    a, b = C.compute_cards(nets)
    return {MODEL_A: a, MODEL_B: b}


def test_model_a_circles_and_pizza_fits(ref_cards):
    c = ref_cards[MODEL_A]
    found = c.circles()
    assert [x["k"] for x in found[:3]] == [17, 3, 15]  # SPEC §7: PCs 1–6
    assert [x["delta"] for x in found[:3]] == [7, 20, 4]
    assert [x["k"] for x in found[3:]] == [25, 6, 29]  # the accompanying circles, PCs 7–12
    for x in found[:3]:
        assert x["fve_pizza"] > x["fve_clock"], x
    np.testing.assert_allclose([found[0]["fve_clock"], found[0]["fve_pizza"]], [0.7541, 0.9918], atol=2e-4)
    assert c.scalars["algorithm"] == "pizza"
    np.testing.assert_allclose(c.scalars["distance_irrelevance"], 0.1717, atol=1e-4)
    # the first six components carry k = 17, 17, 3, 3, 15, 15: the titles of the first three pairs
    np.testing.assert_array_equal(c.arrays["pc_frequency"][:6], [17, 17, 3, 3, 15, 15])


def test_model_b_circles_and_clock_fit(ref_cards):
    c = ref_cards[MODEL_B]
    found = c.circles()
    assert [x["k"] for x in found] == [13, 16, 21, 17]
    main_circle = found[0]
    assert main_circle["fve_clock"] > main_circle["fve_pizza"] > 0
    assert c.scalars["algorithm"] == "clock"
    np.testing.assert_allclose(c.scalars["distance_irrelevance"], 0.8483, atol=1e-4)


def _gather(logits: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """L[s, d] by a direct gather: a = (s + d)/2, b = (s − d)/2 mod p (p odd)."""
    inv2 = pow(2, -1, p)
    s, d = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = ((s + d) * inv2) % p, ((s - d) * inv2) % p
    rows = logits[a * p + b, :p]  # (p, p, p): the p classes of the pair behind each cell
    label = (a + b) % p
    correct = np.take_along_axis(rows, label[..., None], axis=-1)[..., 0]
    wrong = np.where(np.arange(p) == label[..., None], -np.inf, rows).max(axis=-1)
    return correct, wrong


@pytest.mark.parametrize("run", [MODEL_A, MODEL_B])
def test_heatmaps_are_a_direct_gather_of_the_logit_table(ref_cards, run):
    c = ref_cards[run]
    net, p = c.network, c.p
    tokens, _ = all_pairs(net.arch.task)
    direct = np.asarray(make_model(net.arch).apply(net.params, tokens, net.attention_rate, net.attn_scale))
    np.testing.assert_allclose(c.logits, direct, rtol=1e-4, atol=1e-3)  # the network's own logits
    correct, wrong = _gather(c.logits, p)
    np.testing.assert_array_equal(c.correct_table, correct)
    np.testing.assert_array_equal(c.wrong_table, wrong)
    # the tables are the ones behind the card's distance irrelevance (SPEC §5.2)
    for table, metric in ((correct, "distance_irrelevance"), (wrong, "distance_irrelevance_largest_wrong")):
        np.testing.assert_allclose(np.std(table, axis=0).mean() / np.std(table), c.scalars[metric], rtol=1e-4)


def test_pizza_rows_vary_with_difference_clock_rows_do_not(ref_cards):
    def along_difference(t):  # spread of the column means (a − b) vs mean spread down a column (a + b)
        return np.std(t.mean(axis=0)) / np.mean(t.std(axis=0))

    assert along_difference(ref_cards[MODEL_A].correct_table) > 3
    assert along_difference(ref_cards[MODEL_B].correct_table) < 1


def _is_png(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        return im.size


def test_reference_card_files(ref_cards, tmp_path):
    paths = C.write_card(ref_cards[MODEL_A], str(tmp_path))
    assert set(paths) == {"embedding", "logits", "fits", "training", "json"}  # no metrics history
    for kind, path in paths.items():
        if kind != "json":
            w, h = _is_png(path)
            assert w > 500 and h > 150, (kind, w, h)
    with open(paths["json"]) as f:
        numbers = json.load(f)
    assert [x["k"] for x in numbers["circles"]][:3] == [17, 3, 15]
    assert "reference checkpoint" in numbers["history"]  # said on the card, instead of curves


def test_show_sweep_row_writes_every_png(tiny_sweep, tmp_path):
    out = tmp_path / "cards"
    assert main(["show", str(tiny_sweep), "--run", "1", "--out", str(out)]) == 0
    for kind in ("embedding", "logits", "fits", "training", "metrics"):
        path = out / f"run1_{kind}.png"
        assert path.stat().st_size > 5000, kind
        _is_png(str(path))
    numbers = json.loads((out / "run1.json").read_text())
    runs = read_csv(str(tiny_sweep / "runs.csv"))
    row = list(runs["index"]).index(1)
    for m in ("gradient_symmetricity", "distance_irrelevance", "circularity"):  # what the sweep computed
        np.testing.assert_allclose(numbers["metrics"][m], runs[m][row], rtol=1e-5, atol=1e-6)
    assert numbers["history"] == "recorded"


def test_show_default_out_and_errors(tiny_sweep, reference_dir, capsys):
    assert main(["show", str(tiny_sweep), "--run", "0"]) == 0
    assert (tiny_sweep / "cards" / "run0_logits.png").stat().st_size > 5000
    assert main(["show", str(tiny_sweep), "--run", "run2"]) == 0  # the card's name works too
    assert (tiny_sweep / "cards" / "run2_fits.png").stat().st_size > 5000
    assert main(["show", str(tiny_sweep), "--run", "7"]) == 2
    assert "no network with index 7" in capsys.readouterr().err
    assert main(["show", reference_dir, "--run", "nosuchrun"]) == 2
    err = capsys.readouterr().err
    assert "nosuchrun" in err and MODEL_A in err
