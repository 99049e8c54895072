"""Refusals with reasons (issue 5): the atomic writers' guarantees."""

from __future__ import annotations

import os
import re
import stat

import pytest

from phasespace.io import store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------------------------- #
# Atomic writers


def test_atomic_path_never_leaves_a_partial_file(tmp_path):
    path = str(tmp_path / "runs.csv")
    store.write_text(path, "old\n")
    with pytest.raises(RuntimeError), store.atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("half a ta")
        raise RuntimeError("killed")
    with open(path) as f:
        assert f.read() == "old\n"
    assert os.listdir(tmp_path) == ["runs.csv"]
    # permissions follow the umask like an ordinary file (mkstemp would give 0600)
    umask = os.umask(0)
    os.umask(umask)
    store.write_text(path, "new\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    # a temporary left by a killed writer is cleaned up, nothing else is touched
    (tmp_path / ".runs.csv.0a1b2c3d4e5f.tmp").write_text("half")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / ".a.png.123.tmp").write_text("half")
    (tmp_path / "notes.tmp").write_text("mine")
    removed = store.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [".a.png.123.tmp", ".runs.csv.0a1b2c3d4e5f.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["figures", "notes.tmp", "runs.csv"]


def test_every_writer_goes_through_the_atomic_helpers():
    """Static audit: in the package, files are written only by phasespace.io.store (plots render
    into memory and hand the bytes to store.write_bytes; orbax writes checkpoints atomically)."""
    pkg = os.path.join(REPO, "phasespace")
    offenders = []
    patterns = [
        re.compile(r"open\([^)]*['\"][wax]b?\+?['\"]"),
        re.compile(r"np\.save(z|z_compressed|txt)?\("),
        re.compile(r"\.savefig\((?!buf)"),
        re.compile(r"\.to_csv\(|json\.dump\("),
    ]
    for root, _, files in os.walk(pkg):
        for name in files:
            if not name.endswith(".py") or name == "store.py":
                continue
            path = os.path.join(root, name)
            with open(path) as f:
                for i, line in enumerate(f, 1):
                    if any(p.search(line) for p in patterns):
                        offenders.append(f"{os.path.relpath(path, REPO)}:{i}: {line.strip()}")
    assert not offenders, "non-atomic writes:\n" + "\n".join(offenders)
