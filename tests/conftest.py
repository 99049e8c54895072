"""Shared fixtures: paths to the reference data (the repository's data/reference; the environment
variable PHASESPACE_REFERENCE overrides) and small helpers."""

from __future__ import annotations

import os

import pytest

REFERENCE_DIR = os.environ.get(
    "PHASESPACE_REFERENCE",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "reference"),
)


@pytest.fixture(scope="session")
def reference_dir() -> str:
    if not os.path.isdir(REFERENCE_DIR):
        pytest.fail(f"reference data not found at {REFERENCE_DIR} (set PHASESPACE_REFERENCE)")
    return REFERENCE_DIR


CASES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases")
"""Small inputs that once failed (copied from ../shared/cases), each now a test with its right value."""
