"""The benchmark's command line: a quick smoke run leaves the tracked benchmarks/RESULTS.md alone."""

from phasespace.bench.bench import parse


def test_quick_run_does_not_append_unless_asked():
    assert parse([]).append is True
    assert parse(["--quick"]).append is False
    assert parse(["--quick", "--append"]).append is True
    assert parse(["--no-append"]).append is False
