"""A tiny finished sweep (p = 7, four networks, metrics recorded along training) for the card and
report tests."""

from __future__ import annotations

import pytest

from tests.helpers import run_spec

TINY = """
name = "tiny_report"
[axes]
p = 7
d_model = 8
attention_rate = [0.0, 1.0]
seed = [0, 1]
[train]
steps = 40
chunk_steps = 20
log_every = 10
[analysis]
every = 20
"""


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    return run_spec(tmp_path_factory.mktemp("report_sweep"), TINY)
