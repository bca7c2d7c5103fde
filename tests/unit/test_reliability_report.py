"""docs/RELIABILITY.md can show a failure: its figures come from one run only, a failed
test shows as FAILED (with the figures it recorded, never an earlier run's), a figure a
test does not measure shows as n/a, and the fault tests record measurements, not
constants."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from tests.faults import harness, report

FAULTS = Path(harness.__file__).parent


def run(run_id: str, started: str, tests: dict[str, Any], outcomes: dict[str, str]) -> Any:
    return {
        "run": run_id,
        "chaos": True,
        "started_at": started,
        "finished_at": started,
        "tests": tests,
        "outcomes": outcomes,
    }


FEEDER = "tests/faults/test_feeder_killed.py::test_feeder_killed_at_random_moments"
GOOD = {"kills": 30, "tasks": 5000, "lost": 0, "completed_twice": 0, "seconds": 99.0}


def summary_row(page: str, name: str) -> str:
    [row] = [line for line in page.splitlines() if line.startswith("| ") and f"| {name} |" in line]
    return row


def test_a_failed_test_shows_as_failed_and_never_with_an_earlier_runs_figures() -> None:
    data = {
        "runs": {
            "old": run("old", "2026-01-01T00:00:00Z", {"feeder_killed": GOOD}, {FEEDER: "passed"}),
            "new": run("new", "2026-02-01T00:00:00Z", {}, {FEEDER: "failed"}),
        }
    }
    page = report.render(report.pick_run(data, None))
    row = summary_row(page, "Feeder killed")
    assert "**FAILED**" in row and "5000" not in row and "30 feeder kills" not in row
    assert "`new`" in page and "1 fault tests FAILED" in page
    # The old run is still there to render, by name.
    old = report.render(report.pick_run(data, "old"))
    assert "| passed |" in summary_row(old, "Feeder killed")


def test_figures_a_failing_test_recorded_are_shown_with_the_failure() -> None:
    bad = {**GOOD, "lost": 3}
    data = {"runs": {"r": run("r", "2026", {"feeder_killed": bad}, {FEEDER: "failed"})}}
    row = summary_row(report.render(report.pick_run(data, "r")), "Feeder killed")
    assert "**FAILED**" in row and "| 3 |" in row


def test_a_figure_the_test_does_not_measure_is_not_shown_as_zero() -> None:
    figures = {"fuzz_cases": 100, "seconds": 5.0}
    outcomes = {"tests/faults/test_bad_input.py::test_zz": "passed"}
    data = {"runs": {"r": run("r", "2026", {"bad_input": figures}, outcomes)}}
    row = summary_row(report.render(report.pick_run(data, "r")), "Bad input")
    assert row.count("| n/a |") >= 2, row  # lost, completed twice: not measured there


def test_tests_that_did_not_run_show_as_not_run() -> None:
    data = {"runs": {"r": run("r", "2026", {}, {FEEDER: "passed"})}}
    row = summary_row(report.render(report.pick_run(data, "r")), "Workers killed")
    assert "not run" in row


def test_record_keeps_each_runs_figures_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "FIGURES", tmp_path / "figures.json")
    monkeypatch.setattr(harness, "RUN_ID", "first")
    harness.record("feeder_killed", {"lost": 0})
    harness.record_outcomes({FEEDER: "passed"}, {"tests": 1})
    monkeypatch.setattr(harness, "RUN_ID", "second")
    harness.record_outcomes({FEEDER: "failed"}, {"tests": 1})
    runs = json.loads((tmp_path / "figures.json").read_text())["runs"]
    assert set(runs["first"]["tests"]) == {"feeder_killed", "_suite"}
    assert set(runs["second"]["tests"]) == {"_suite"}  # nothing carried over
    assert runs["second"]["outcomes"] == {FEEDER: "failed"}


def _recorded_constants(path: Path) -> list[str]:
    """Figures passed to record() as number or boolean literals (not measured)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "record"):
            continue
        for figures in node.args[1:2]:
            if not isinstance(figures, ast.Dict):
                continue
            for key, value in zip(figures.keys, figures.values, strict=True):
                if isinstance(value, ast.Constant) and isinstance(value.value, int | float):
                    found.append(f"{path.name}: {ast.unparse(key) if key else '**'}")
    return found


def test_fault_tests_record_measurements_not_constants() -> None:
    constants = [c for path in sorted(FAULTS.glob("test_*.py")) for c in _recorded_constants(path)]
    assert constants == []
