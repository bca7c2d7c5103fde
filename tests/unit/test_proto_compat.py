"""The wire-compatibility guard (`make proto-compat`): buf rejects what would break a
client built on the released contract, and lets through what would not.

Each case copies protos/ (the contract, buf.yaml and the released image) to a temporary
directory, changes the contract there and runs buf as `make proto-compat` does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
PROTO = Path("feedwork/v1/feeder.proto")
RELEASED = "released/feedwork-v1.binpb"


def buf(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), f"{BUF} is missing: `make proto-compat` (or `make test`) installs it"
    return subprocess.run(
        [str(BUF), *args], cwd=directory, capture_output=True, text=True, timeout=60
    )


def copied(tmp_path: Path) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy)
    return copy


def changed(tmp_path: Path, edit: tuple[str, str]) -> Path:
    """protos/ copied, with `edit` (a regular expression and its replacement) applied once."""
    copy = copied(tmp_path)
    text = (copy / PROTO).read_text()
    new, made = re.subn(edit[0], edit[1], text, count=1, flags=re.MULTILINE)
    assert made == 1, f"the edit {edit[0]!r} matched nothing"
    (copy / PROTO).write_text(new)
    return copy


def breaking(directory: Path) -> subprocess.CompletedProcess[str]:
    return buf(directory, "breaking", "--against", RELEASED)


def test_the_contract_as_it_is_passes(tmp_path: Path) -> None:
    copy = copied(tmp_path)
    assert buf(copy, "lint").returncode == 0
    result = breaking(copy)
    assert result.returncode == 0, result.stdout + result.stderr


BREAKING = {
    "two TaskSpec field numbers swapped": (
        r"string queue = 1;(?s:(.*?))bytes payload = 2;",
        r"string queue = 2;\1bytes payload = 1;",
        'Field "1" on message "TaskSpec" changed name from "queue" to "payload"',
    ),
    "a field's type changed": (
        r"int32 priority = 4;",
        "int64 priority = 4;",
        'changed type from "int32" to "int64"',
    ),
    "an enum value removed": (
        r"^\s*ACK_OUTCOME_INVALID_TOKEN = 6;\n",
        "",
        'enum value "6" on enum "AckOutcome" was deleted',
    ),
    "a field removed without reserving it": (
        r"^\s*int32 priority = 4;\n",
        "",
        'was deleted without reserving the number "4"',
    ),
    "a field renamed": (r"string queue = 1;", "string queue_name = 1;", "changed name"),
    "an RPC removed": (
        r"^\s*rpc GetStats\(GetStatsRequest\) returns \(GetStatsResponse\);\n",
        "",
        'Previously present RPC "GetStats"',
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKING))
def test_breaking_changes_fail(tmp_path: Path, case: str) -> None:
    pattern, replacement, message = BREAKING[case]
    result = breaking(changed(tmp_path, (pattern, replacement)))
    assert result.returncode != 0, f"{case}: buf let it through"
    assert message in result.stdout, result.stdout + result.stderr


def test_a_field_removed_with_its_number_and_name_reserved_passes(tmp_path: Path) -> None:
    copy = changed(tmp_path, (r"int32 priority = 4;", 'reserved 4;\n  reserved "priority";'))
    result = breaking(copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_added_field_passes_and_lint_still_holds(tmp_path: Path) -> None:
    copy = changed(tmp_path, (r"string queue = 1;", "string queue = 1;\n  string tenant = 99;"))
    assert breaking(copy).returncode == 0
    assert buf(copy, "lint").returncode == 0


def test_lint_catches_an_enum_value_without_its_prefix(tmp_path: Path) -> None:
    copy = changed(tmp_path, (r"ACK_OUTCOME_INVALID_TOKEN = 6;", "INVALID = 6;"))
    result = buf(copy, "lint")
    assert result.returncode != 0 and "INVALID" in result.stdout, result.stdout
