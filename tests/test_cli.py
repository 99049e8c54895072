"""The command line's default data: the published tables shipped with the package, the released
checkpoints found in the repository (``data/reference``), and a clear error when they are not."""

import os

from phasespace.cli import main
from phasespace.io import reference, store
from phasespace.phase import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_defaults_to_the_shipped_tables_from_any_directory(tmp_path, monkeypatch, capsys):
    fixed, vary = compare.published_tables()
    assert fixed.endswith("1l_fixedwidth.csv.gz") and os.path.isfile(fixed) and os.path.isfile(vary)
    monkeypatch.chdir(tmp_path)  # no ../shared/reference from here
    assert main(["compare", fixed, "--out", "out"]) == 0
    out = capsys.readouterr().out
    assert "2381" in out and "817" in out  # SPEC §6, fixed width against itself
    for stem in ("1l_fixedwidth", "1l_varywidth"):
        rows = store.read_csv(str(tmp_path / "out" / f"alpha_star_vs_{stem}.csv"))
        assert len(rows["alpha_star_diff"]) > 0
    assert len(compare.load_table(vary)["attention_rate"]) == 6148


def test_published_tables_from_a_folder_plain_or_gzipped(tmp_path):
    (tmp_path / "1l_fixedwidth.csv").write_text("x\n")
    (tmp_path / "1l_varywidth.csv.gz").write_bytes(b"")
    got = compare.published_tables(str(tmp_path))
    assert got == [str(tmp_path / "1l_fixedwidth.csv"), str(tmp_path / "1l_varywidth.csv.gz")]


def test_reference_folder_is_found_in_the_repository():
    found = reference.find_reference_dir()
    assert found == os.path.join(REPO, "data", "reference")
    runs = sorted(f for f in os.listdir(found) if f.endswith(".npz"))
    assert len(runs) == 18 and all(os.path.isfile(os.path.join(found, r[:-4] + ".json")) for r in runs)


def test_missing_reference_folder_names_the_places_and_the_argument(tmp_path, monkeypatch, capsys):
    places = [str(tmp_path / "data" / "reference"), str(tmp_path / "shared" / "reference")]
    monkeypatch.setattr(reference, "reference_dir_candidates", lambda: places)
    assert main(["reference"]) == 2
    err = capsys.readouterr().err
    assert all(p in err for p in places) and "phasespace reference DIR" in err
    assert main(["analyze"]) == 2
    assert places[0] in capsys.readouterr().err


def test_run_summary_explains_itself():
    """The table `phasespace run` prints: full metric names, circular as a fraction, and the
    count of each algorithm per attention rate (issue 11: no unexplained abbreviations)."""
    import numpy as np

    from phasespace.cli import summary_table

    runs = {
        "attention_rate": np.asarray([0.0, 0.0, 1.0, np.nan]),
        "test_accuracy": np.asarray([1.0, 0.5, 1.0, 1.0]),
        "gradient_symmetricity": np.asarray([0.99, 0.97, 0.3, np.nan]),
        "distance_irrelevance": np.asarray([0.2, 0.4, 0.9, 0.5]),
        "distance_irrelevance_largest_wrong": np.asarray([0.3, 0.5, 0.95, 0.6]),
        "circular": np.asarray([True, False, True, True]),
        "algorithm": np.asarray(["pizza", "non-circular", "clock", "mixed"]),
    }
    lines = summary_table(runs).splitlines()
    head = lines[1]
    for name in ("gradient symmetricity", "distance irrelevance (largest wrong)", "circular fraction"):
        assert name in head
    assert "Clock" in head and "Pizza" in head and "non-circular" in head
    assert "d.i." not in head and "grad sym" not in head
    row0 = lines[2].split()
    # α = 0: 2 networks, mean test accuracy 0.75, circular fraction 0.5, Clock 0, Pizza 1, non-circular 1
    assert row0[:3] == ["0.000", "2", "0.7500"] and row0[6] == "0.50"
    assert lines[-1].split()[0] == "none"  # the network without attention (α NaN) gets its own row


def test_printed_tables_keep_full_column_names(capsys):
    """`analyze` and `reference` print every column under its full name, values aligned under it."""
    from phasespace.cli import print_rows

    rows = [{"run": "p99zdpze5l", "gradient_symmetricity": 0.99367, "circles_accuracy": 1.0}]
    print_rows(rows, ["run", "gradient_symmetricity", "circles_accuracy"], ("circles k (δ)", ["17 (7)"]))
    head, line = capsys.readouterr().out.splitlines()
    assert head.split() == ["run", "gradient_symmetricity", "circles_accuracy", "circles", "k", "(δ)"]
    assert line.split() == ["p99zdpze5l", "0.99367", "1", "17", "(7)"]
    assert head.index("gradient_symmetricity") + len("gradient_symmetricity") == line.index("0.99367") + 7
