"""Fault tests: every test here is also marked `chaos` (see each module's `pytestmark`), so
`make chaos` (FEEDWORK_CHAOS=1 pytest tests/faults -m chaos) runs them at full size while
plain `make test` runs them at CI size. The time the fault tests took goes into the
figures as "_suite"."""

from __future__ import annotations

import pytest

from tests.faults.harness import record_outcomes

_seconds: list[float] = []
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/faults/" not in report.nodeid.replace("\\", "/"):
        return
    _seconds.append(report.duration)
    # A failure in any phase (setup, call, teardown) is the test's outcome.
    if _outcomes.get(report.nodeid) == "failed":
        return
    if report.when == "call" or report.outcome != "passed":
        _outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _outcomes:
        return
    outcomes = list(_outcomes.values())
    record_outcomes(
        dict(_outcomes),
        {
            "seconds": round(sum(_seconds), 1),
            "tests": len(outcomes),
            "passed": outcomes.count("passed"),
            "failed": outcomes.count("failed"),
            "skipped": outcomes.count("skipped"),
        },
    )
