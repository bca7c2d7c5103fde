"""Property tests write nothing into the checkout: hypothesis keeps its example database
and its cache of constants in a directory of the test run's own (tests/conftest.py), not
in `.hypothesis/` of the directory the tests run in."""

from __future__ import annotations

from pathlib import Path

from hypothesis.configuration import storage_directory

ROOT = Path(__file__).resolve().parents[2]


def test_hypothesis_stores_nothing_in_the_checkout() -> None:
    home = storage_directory(intent_to_write=False).home_directory.resolve()
    assert not home.is_relative_to(ROOT), home
    assert not home.is_relative_to(Path.cwd().resolve()), home
