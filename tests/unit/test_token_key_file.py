"""The token secret file: its format, its errors (naming file and line, never a secret), the
watch that re-reads it, and `feedwork db token-key` / `token-file` that make and check it."""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

import pytest

from feeder import dbtool
from feeder.__main__ import build_parser
from feeder.config import ConfigError, load_settings
from feeder.core.tokens import KeyRing, TokenCodec
from feeder.service.file_versions import FileVersion
from feeder.service.token_keys import (
    FILE_MODE,
    MAX_FILE_BYTES,
    TokenKeyFile,
    TokenKeyFileError,
    free_key_id,
    parse_key_file,
    read_key_file,
    write_new_key,
)

S1, S2, S3 = "11" * 32, "a2" * 32, "3C" * 40
PATH = "/etc/feedwork/keys"
WANT = re.escape("want KEY_ID SECRET [current]")


def parse(text: str) -> KeyRing:
    return parse_key_file(text, PATH)


def write(path: Path, text: str, mode: int = 0o600) -> None:
    """Writes the file in place, with a later mtime than any before: a new version."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    path.chmod(mode)
    later = max(path.stat().st_mtime_ns, before + 10**9)
    os.utime(path, ns=(later, later))


def test_a_file_with_comments_blank_lines_and_both_cases_of_hex() -> None:
    ring = parse(f"# lease-token keys\n\n1 {S1}   # the first\n  2\t{S2} current\n3 {S3}\n# end\n")
    assert ring.current == 2
    assert dict(ring.keys) == {1: bytes.fromhex(S1), 2: bytes.fromhex(S2), 3: bytes.fromhex(S3)}


def test_the_current_key_is_the_marked_one_wherever_it_is() -> None:
    assert parse(f"1 {S1} current\n2 {S2}\n").current == 1
    assert parse(f"200 {S1}\n7 {S2} current\n").current == 7
    assert parse(f"255 {S1} current\r\n").current == 255  # CRLF line ends
    # None marked: the keys verify, the database's secret signs.
    staged = parse(f"1 {S1}\n2 {S2}\n")
    assert staged.current is None and set(staged.keys) == {1, 2}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", None, "holds no key"),
        ("# nothing\n\n", None, "holds no key"),
        (f"1 {S1} current\n1 {S2}\n", 2, "key id 1 is used twice"),
        (f"1 {S1} current\n2 {S2} current\n", 2, "key 1 is already marked current"),
        (f"# keys\n1 {'ab' * 31} current\n", 2, "31 bytes; a key needs at least 32"),
        (f"1 {S1}1 current\n", 1, "not hex digits"),  # an odd number of digits
        (f"1 {S1[:-1]}g current\n", 1, "not hex digits"),
        (f"1 0x{S1} current\n", 1, "not hex digits"),
        (f"1 {S1}==\n", 1, "not hex digits"),  # base64's padding
        (f"1 {S1} CURRENT\n", 1, WANT),
        (f"1 {S1} current now\n", 1, WANT),
        (f"{S1}\n", 1, WANT),
        (f"\n\n{S1} 1 current\n", 3, "the key id must be a number from 1 to 255"),
        (f"0 {S1} current\n", 1, "the key id must be a number from 1 to 255"),
        (f"256 {S1} current\n", 1, "the key id must be a number from 1 to 255"),
        (f"-1 {S1} current\n", 1, "the key id must be a number from 1 to 255"),
        (f"1.0 {S1} current\n", 1, "the key id must be a number from 1 to 255"),
        (f"1 {S1} current\nkey={S2}\n", 2, WANT),
    ],
)
def test_a_malformed_file_is_refused_naming_the_file_and_line(
    text: str, line: int | None, message: str
) -> None:
    with pytest.raises(TokenKeyFileError, match=message) as raised:
        parse(text)
    where = f"token secret file {PATH}" + ("" if line is None else f", line {line}")
    assert str(raised.value).startswith(where + ": ")
    assert raised.value.line == line
    for secret in (S1, S2, S1[:-1], "ab" * 31):
        assert secret not in str(raised.value)  # a message never quotes a secret


def test_read_refuses_what_is_not_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(TokenKeyFileError, match="missing: cannot read it: No such file"):
        read_key_file(str(tmp_path / "missing"))
    with pytest.raises(TokenKeyFileError, match="is not a regular file"):
        read_key_file(str(tmp_path))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(TokenKeyFileError, match="is not a regular file"):
        read_key_file(str(tmp_path / "fifo"))  # refused, not waited on
    big = tmp_path / "big"
    big.write_text(f"1 {S1} current\n" + "#" * MAX_FILE_BYTES)
    with pytest.raises(TokenKeyFileError, match="larger than 65536 bytes"):
        read_key_file(str(big))
    binary = tmp_path / "binary"
    binary.write_bytes(f"1 {S1} current\n".encode() + b"\xff\xfe\n")
    with pytest.raises(TokenKeyFileError, match="line 2: is not UTF-8 text"):
        read_key_file(str(binary))


def test_a_file_open_to_others_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    write(path, f"1 {S1} current\n", mode=0o600)
    with caplog.at_level(logging.WARNING, "feedwork.feeder.tokens"):
        read_key_file(str(path))
        assert not caplog.records
        path.chmod(0o640)
        ring, _ = read_key_file(str(path))
    assert ring.current == 1
    [warning] = caplog.records
    assert "open to other users (mode -rw-r-----)" in warning.message
    assert "chmod 600" in warning.message


def test_poll_returns_new_keys_only_when_the_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    write(path, f"1 {S1} current\n")
    watched = TokenKeyFile(str(path))
    assert watched.load().current == 1
    assert watched.poll() is None  # read once more after the load: the same keys
    assert watched.poll() is None
    write(path, f"1 {S1}\n2 {S2} current\n")
    ring = watched.poll()
    assert ring is not None and ring.current == 2 and set(ring.keys) == {1, 2}
    assert watched.poll() is None
    write(path, f"# rotated\n1 {S1}\n2 {S2} current\n")  # new text, same keys
    assert watched.poll() is None


def test_a_rewrite_that_leaves_the_stat_as_it_was_is_still_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewrites within the timestamps' resolution (here: a stat that never changes): each
    version read is read once more at the next poll, so the last one is seen all the same."""
    monkeypatch.setattr(FileVersion, "of", classmethod(lambda cls, info: cls(1, 2, 3, 4, 5)))
    path = tmp_path / "keys"
    path.write_text(f"1 {S1} current\n2 {S2}\n")
    watched = TokenKeyFile(str(path))
    watched.load()
    path.write_text(f"1 {S1}\n2 {S2} current\n")
    ring = watched.poll()
    assert ring is not None and ring.current == 2
    path.write_text(f"1 {S1} current\n2 {S2}\n")  # changed again, under the same stat
    ring = watched.poll()
    assert ring is not None and ring.current == 1
    assert watched.poll() is None  # read again: the same keys; the stat is trusted now
    path.write_text(f"1 {S1}\n2 {S2} current\n")
    assert watched.poll() is None  # (a real rewrite a poll later has another mtime)


def test_a_bad_new_version_is_logged_once_and_the_old_keys_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    write(path, f"1 {S1} current\n")
    watched = TokenKeyFile(str(path))
    watched.load()
    caplog.set_level(logging.INFO, "feedwork.feeder.tokens")
    write(path, f"1 {S1} current\n2 {S2[:10]}\n")
    assert watched.poll() is None
    assert watched.poll() is None
    assert watched.poll() is None
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"token secret file {path}, line 2: the secret of key 2 is 5 bytes" in error.message
    assert "keeping the keys read before (keys 1; current 1)" in error.message
    assert S2[:10] not in error.message
    caplog.clear()
    write(path, f"1 {S1} current\n2 {S2}\n")
    ring = watched.poll()
    assert ring is not None and set(ring.keys) == {1, 2}
    assert [r.message for r in caplog.records] == [
        f"token secret file {path} changed: keys 1, 2; current 1"
    ]


def test_a_file_that_goes_missing_keeps_the_keys_and_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    write(path, f"1 {S1} current\n")
    watched = TokenKeyFile(str(path))
    watched.load()
    caplog.set_level(logging.INFO, "feedwork.feeder.tokens")
    path.unlink()
    for _ in range(3):
        assert watched.poll() is None
    [error] = caplog.records
    assert "cannot read it" in error.message and "keys 1; current 1" in error.message
    caplog.clear()
    write(path, f"1 {S1} current\n")
    assert watched.poll() is None  # the same keys as before
    assert [r.message for r in caplog.records] == [
        f"token secret file {path} is valid again: keys 1; current 1"
    ]


def test_a_chmod_is_a_new_version_and_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    write(path, f"1 {S1} current\n")
    watched = TokenKeyFile(str(path))
    watched.load()
    watched.poll()
    caplog.set_level(logging.WARNING, "feedwork.feeder.tokens")
    path.chmod(0o604)
    assert watched.poll() is None
    assert "open to other users" in caplog.text


def test_free_key_id() -> None:
    assert free_key_id({}) == 1
    assert free_key_id({1: b"", 7: b""}) == 8
    assert free_key_id({255: b""}) == 1
    assert free_key_id(dict.fromkeys((1, 2, 255), b"")) == 3
    with pytest.raises(ValueError, match="all 255 key ids are in use"):
        free_key_id(dict.fromkeys(range(1, 256), b""))


def test_write_new_key_makes_a_file_then_adds_keys_not_current(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    assert write_new_key(str(path), current=True) == 1
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE
    first, _ = read_key_file(str(path))
    assert first.current == 1 and len(first.keys[1]) == 32
    path.chmod(0o640)  # the operator's choice is kept
    with open(path, "a") as file:
        file.write("# kept comment")  # no newline at the end
    assert write_new_key(str(path)) == 2
    assert write_new_key(str(path), 9) == 9
    ring, _ = read_key_file(str(path))
    assert ring.current == 1 and set(ring.keys) == {1, 2, 9}
    assert ring.keys[1] == first.keys[1] and len({*ring.keys.values()}) == 3
    assert "# kept comment\n" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["keys"]  # no temporary file left
    with pytest.raises(TokenKeyFileError, match="key id 9 is in use already"):
        write_new_key(str(path), 9)
    with pytest.raises(ValueError, match="from 1 to 255"):
        write_new_key(str(path), 256)
    with pytest.raises(TokenKeyFileError, match="key 1 is current: add the new key unmarked"):
        write_new_key(str(path), current=True)
    assert set(read_key_file(str(path))[0].keys) == {1, 2, 9}


def test_write_new_key_marks_a_key_current_where_none_is(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    assert write_new_key(str(path)) == 1
    assert read_key_file(str(path))[0].current is None
    assert write_new_key(str(path), current=True) == 2
    assert read_key_file(str(path))[0].current == 2


def test_write_new_key_leaves_an_invalid_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"1 {S1}\n1 {S2}\n")
    with pytest.raises(TokenKeyFileError, match="used twice"):
        write_new_key(str(path))
    assert path.read_text() == f"1 {S1}\n1 {S2}\n"


def test_the_db_tool_prints_adds_and_checks_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dbtool.main(["token-key", "--id", "5", "--current"]) == dbtool.EXIT_OK
    line = capsys.readouterr().out
    ring = parse(line)
    assert ring.current == 5 and len(ring.keys[5]) == 32
    # A key it makes signs tokens.
    codec = TokenCodec(b"legacy-secret-of-the-database!!!", ring)
    assert codec.verify(codec.issue(1, 1)).task_id == 1
    assert dbtool.main(["token-key"]) == dbtool.EXIT_OK
    assert capsys.readouterr().out.startswith("1 ")
    path = str(tmp_path / "keys")
    assert dbtool.main(["token-key", "--file", path, "--current"]) == dbtool.EXIT_OK
    assert capsys.readouterr().out == f"{path}: added key 1 (current)\n"
    assert dbtool.main(["token-key", "--file", path]) == dbtool.EXIT_OK
    assert "added key 2\n  not current yet: once every feeder's file" in capsys.readouterr().out
    assert dbtool.main(["token-file", path]) == dbtool.EXIT_OK
    assert capsys.readouterr().out == f"{path}: keys 1, 2; current 1\n"
    assert dbtool.main(["token-key", "--file", path, "--current"]) == dbtool.EXIT_FAILED
    assert "key 1 is current: add the new key unmarked" in capsys.readouterr().err
    Path(path).write_text(f"1 {S1}\n")
    assert dbtool.main(["token-file", path]) == dbtool.EXIT_OK
    assert "keys 1; none current (new tokens signed with the database's secret)" in (
        capsys.readouterr().out
    )
    Path(path).write_text(f"1 {S1[2:]} current\n")
    assert dbtool.main(["token-file", path]) == dbtool.EXIT_FAILED
    err = capsys.readouterr().err
    assert f"token secret file {path}, line 1: the secret of key 1 is 31 bytes" in err
    with pytest.raises(SystemExit):
        dbtool.main(["token-key", "--id", "0"])


def test_the_setting_comes_from_flag_variable_or_config_file(tmp_path: Path) -> None:
    assert load_settings({}, {}).token_secret_file is None
    args = vars(build_parser().parse_args(["--token-secret-file", "/run/keys"]))
    assert load_settings(args, {}).token_secret_file == "/run/keys"
    env = {"FEEDWORK_TOKEN_SECRET_FILE": "/env/keys"}
    assert load_settings({}, env).token_secret_file == "/env/keys"
    config = tmp_path / "feeder.toml"
    config.write_text('[feeder]\ntoken_secret_file = "/toml/keys"\n')
    assert load_settings({"config": str(config)}, {}).token_secret_file == "/toml/keys"
    with pytest.raises(ConfigError, match="token_secret_file: invalid path"):
        config.write_text("[feeder]\ntoken_secret_file = 1\n")
        load_settings({"config": str(config)}, {})
