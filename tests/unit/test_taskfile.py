"""Task files (feedwork.taskfile): lines checked by the feeder's own rules and named by
number, and the idempotency keys that make running a file again safe."""

from __future__ import annotations

import pytest

from feedwork.taskfile import TaskFileError, parse_lines, read_specs


def keys(*lines: str) -> list[str | None]:
    data = [line.encode() + b"\n" for line in lines]
    return [spec.idempotency_key for _, spec in read_specs(data, default_queue="q")]


def test_a_line_keeps_its_key_whatever_else_changes() -> None:
    a, b, c = '{"payload": "a"}', '{"payload": "b"}', '{"payload": "c"}'
    first = keys(a, b, c)
    assert len(set(first)) == 3 and all(k and k.startswith("line-") for k in first)
    again = keys(c, "", "# note", a, '{"payload": "new"}', b)
    assert [again[0], again[1], again[3]] == [first[2], first[0], first[1]]
    assert keys(b) == [first[1]]


def test_identical_lines_are_distinct_tasks() -> None:
    line = '{"payload": "same"}'
    once, twice, thrice = keys(line, line, line)
    assert twice == f"{once}-2" and thrice == f"{once}-3"


def test_a_line_with_its_own_key_keeps_it() -> None:
    assert keys('{"payload": "a", "idempotency_key": "mine"}') == ["mine"]


def test_fresh_keys_leave_the_key_to_the_client() -> None:
    lines = [b'{"payload": "a"}\n']
    [(_, spec)] = read_specs(lines, default_queue="q", line_keys=False)
    assert spec.idempotency_key is None


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"queue": "a b"}', "line 2: queue: must be 1-128 characters of [A-Za-z0-9._-]"),
        (b'{"priority": 1001}', "line 2: priority: must be between -1000 and 1000"),
        (b'{"lease_duration": 0.5}', "line 2: lease_duration: must be between 1s and 12h"),
        (b'{"headers": {"": "x"}}', "line 2: headers"),
        (b'{"idempotency_key": "' + b"k" * 257 + b'"}', "line 2: idempotency_key: "),
        (b'{"payload": "caf\xe9"}', "line 2: not UTF-8 text (byte 17 is 0xe9)"),
        (b"[1]", "line 2: expected a JSON object"),
    ],
)
def test_bad_lines_are_named_by_number(line: bytes, error: str) -> None:
    lines = [b"# tasks\n", line + b"\n", b'{"payload": "fine"}\n']
    parsed = list(parse_lines(lines, default_queue="q"))
    assert [number for number, _ in parsed] == [2, 3]
    assert isinstance(parsed[0][1], TaskFileError)
    assert str(parsed[0][1]).startswith(error)
    with pytest.raises(TaskFileError, match=r"^line 2: "):
        list(read_specs(lines, default_queue="q"))


def test_a_byte_order_mark_is_not_part_of_the_first_line() -> None:
    assert keys("\ufeff" + '{"payload": "a"}') == keys('{"payload": "a"}')


def test_durations_are_seconds_or_written_as_on_the_command_line() -> None:
    lines = [b'{"delay": 90, "lease_duration": "2m"}\n', b'{"delay": "1h30m"}\n']
    specs = [spec for _, spec in read_specs(lines, default_queue="q")]
    assert [(s.delay, s.lease_duration) for s in specs] == [(90.0, 120.0), (5400.0, None)]
    with pytest.raises(TaskFileError, match=r"line 1: 'delay' must be seconds >= 0 or a"):
        list(read_specs([b'{"delay": "1 hour"}'], default_queue="q"))
