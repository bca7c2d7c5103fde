"""`feedwork keys`: a new key's line grants what it says, to that key only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from feeder.keytool import main
from feeder.server.access import Role, parse_access_list
from feedwork.apikeys import key_id


def test_new_key_to_a_file_and_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ingest.key"
    assert main(["new", "ingest", "producer:images", "--out", str(out)]) == 0
    key = out.read_text().strip()
    assert key_id(key) and os.stat(out).st_mode & 0o777 == 0o600
    line = capsys.readouterr().out.splitlines()[-1]
    assert key not in line
    principal = parse_access_list(line, "line").for_key(key)
    assert principal is not None and principal.name == "ingest"
    assert principal.may(Role.PRODUCER, ["images"]) is None
    assert principal.may(Role.PRODUCER, ["other"]) == "other"
    assert main(["new", "again", "admin", "--out", str(out)]) == 1  # never overwritten


def test_bad_roles_and_lists_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new", "x", "reader"]) == 2
    assert "'reader' is not a role" in capsys.readouterr().err
    bad = tmp_path / "access.txt"
    bad.write_text("ok cert:a admin\nbroken sha256:12 admin\n")
    assert main(["check", str(bad)]) == 1
    assert f"{bad}:2:" in capsys.readouterr().err
    bad.write_text("ok cert:a admin\n")
    assert main(["check", str(bad)]) == 0
    assert "1 entries, valid" in capsys.readouterr().out
