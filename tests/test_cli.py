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
