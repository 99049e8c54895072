"""Helpers shared by the tests."""

import os


def run_spec(folder: os.PathLike, text: str, name: str = "tiny") -> os.PathLike:
    """Write the TOML ``text`` to ``folder/<name>.toml``, run it through the command line into
    ``folder/out`` (asserting exit code 0) and return that sweep directory."""
    from phasespace.cli import main

    spec = folder / f"{name}.toml"
    spec.write_text(text)
    out = folder / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    return out
