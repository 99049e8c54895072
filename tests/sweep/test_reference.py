"""The paper's released checkpoints through the importer reproduce SPEC §7 (to 1e-3)."""

import os

import numpy as np
import pytest

from phasespace.cli import main
from phasespace.io import store
from phasespace.io.reference import (
    CheckpointError,
    load_reference_transformer,
    read_reference_config,
    transformer_params_from_state_dict,
)
from phasespace.sweep.reanalyze import analyze_reference_checkpoints

SPEC7 = {
    # run: (α, gradient symmetricity, distance irrelevance correct / largest wrong, circularity, accuracy, L2)
    "p99zdpze5l": (0.0, 0.99367, 0.1717, 0.2218, 0.9978, 1.0, 22.854),  # Model A (Pizza)
    "l8k1hzciux": (1.0, 0.3336, 0.8483, 0.8849, 0.9989, 1.0, 24.814),  # Model B (Clock)
}


@pytest.mark.parametrize("run", sorted(SPEC7))
def test_spec7_values(reference_dir, run):
    alpha, gs, di, di_lw, circ, acc, norm = SPEC7[run]
    (r,) = analyze_reference_checkpoints([os.path.join(reference_dir, f"{run}.npz")])[0]
    assert r["attention_rate"] == alpha
    assert r["gradient_symmetricity"] == pytest.approx(gs, abs=1e-3)
    assert r["gradient_symmetricity_zero_grads"] == 0
    assert r["distance_irrelevance"] == pytest.approx(di, abs=1e-3)
    assert r["distance_irrelevance_largest_wrong"] == pytest.approx(di_lw, abs=1e-3)
    assert r["circularity"] == pytest.approx(circ, abs=1e-3)
    assert r["accuracy"] == acc
    assert r["param_norm"] == pytest.approx(norm, abs=1e-3)


def test_reference_command_prints_full_column_names(reference_dir, tmp_path, capsys):
    """``phasespace reference`` is a view of the analysis of ``phasespace analyze <folder>``: the
    transformer checkpoints only, full column names, the same numbers (SPEC §7)."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for run in sorted(SPEC7):
        for ext in (".npz", ".json"):
            os.symlink(os.path.join(reference_dir, run + ext), folder / (run + ext))
    mlp = next(
        f[:-5]
        for f in sorted(os.listdir(reference_dir))
        if f.endswith(".json") and read_reference_config(os.path.join(reference_dir, f)).get("model_type")
    )
    for ext in (".npz", ".json"):
        os.symlink(os.path.join(reference_dir, mlp + ext), folder / (mlp + ext))
    out_csv = tmp_path / "table.csv"
    assert main(["reference", str(folder), "--out", str(out_csv)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    head = lines[0].split()
    assert "distance_irrelevance" in head and "distance_irrelevance_largest_wrong" in head
    assert [ln.split()[0] for ln in lines[1:]] == sorted(SPEC7)  # the MLP checkpoint is left out
    table = store.read_csv(str(out_csv))
    for i, run in enumerate(sorted(SPEC7)):
        gs, di, di_lw = SPEC7[run][1:4]
        assert table["gradient_symmetricity"][i] == pytest.approx(gs, abs=1e-3)
        assert table["distance_irrelevance"][i] == pytest.approx(di, abs=1e-3)
        assert table["distance_irrelevance_largest_wrong"][i] == pytest.approx(di_lw, abs=1e-3)


def test_wrong_shape_refused_naming_key(reference_dir):
    arch, _, _ = load_reference_transformer(os.path.join(reference_dir, "p99zdpze5l.npz"))
    with np.load(os.path.join(reference_dir, "p99zdpze5l.npz")) as z:
        state = {k: z[k] for k in z.files}
    state["blocks.0.mlp.W_in"] = state["blocks.0.mlp.W_in"][:, :100]
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.W_in.*\(512, 128\).*\(512, 100\)"):
        transformer_params_from_state_dict(state, arch)
    del state["blocks.0.mlp.W_in"]
    with pytest.raises(CheckpointError, match=r"missing key 'blocks\.0\.mlp\.W_in'"):
        transformer_params_from_state_dict(state, arch)
