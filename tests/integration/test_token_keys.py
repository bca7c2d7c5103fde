"""--token-secret-file over real gRPC: tokens signed with the file's current key ack;
rotating the file keeps earlier leases ackable until their key is dropped; tokens signed
with the database's secret before the switch still ack; a bad file stops the start, a bad
rewrite is ignored. On SQLite and on PostgreSQL (several feeders, one database)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feeder.config import Settings
from feeder.server.app import FeederServer, StartupError
from feeder.service import tasks
from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import FeederFactory, RunningFeeder, make_store
from tests.integration.test_feeder_rpc import ack, lease, submit

pytestmark = pytest.mark.timeout(60)

STORES = pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
SECRETS = {key_id: bytes([key_id]) * 32 for key_id in (1, 2, 3)}
ACKED, INVALID = pb.ACK_OUTCOME_ACKED, pb.ACK_OUTCOME_INVALID_TOKEN


def write_keys(path: Path, *key_ids: int, current: int | None, extra: str = "") -> None:
    """Writes the key file atomically, as the docs ask, with a later mtime than before."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    lines = [f"{i} {SECRETS[i].hex()}" + (" current" if i == current else "") for i in key_ids]
    temporary = path.with_name(path.name + ".new")
    temporary.write_text("# test keys\n" + "\n".join(lines) + "\n" + extra)
    temporary.chmod(0o600)
    later = max(temporary.stat().st_mtime_ns, before + 10**9)
    os.utime(temporary, ns=(later, later))
    os.replace(temporary, path)


def key_of(token: str) -> int | None:
    """The key id a token names; None for a token without one (version 1 or 2)."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return raw[1] if raw[0] == 3 else None


async def tokens(feeder: RunningFeeder, count: int) -> list[str]:
    await submit(feeder, *(pb.TaskSpec(queue="q") for _ in range(count)))
    leased = await lease(feeder, n=count)
    assert len(leased) == count
    return [task.lease_token for task in leased]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "token-keys"
    write_keys(path, 1, current=1)
    return path


def with_keys(settings: Settings, path: Path) -> Settings:
    return dataclasses.replace(settings, token_secret_file=str(path))


@STORES
async def test_rotation_keeps_leases_ackable_until_their_key_is_dropped(
    store_kind: str, key_file: Path, feeder_factory: FeederFactory, feeder_settings: Settings
) -> None:
    feeder = await feeder_factory(
        store_kind=store_kind, settings=with_keys(feeder_settings, key_file)
    )
    first, old_a, old_b = await tokens(feeder, 3)
    assert [key_of(t) for t in (first, old_a, old_b)] == [1, 1, 1]
    assert await ack(feeder, first) == [ACKED]

    write_keys(key_file, 1, 2, current=2)
    assert await feeder.service.reload_token_keys()
    [new] = await tokens(feeder, 1)
    assert key_of(new) == 2
    assert await ack(feeder, old_a) == [ACKED]  # leased before the rotation

    write_keys(key_file, 2, current=2)
    assert await feeder.service.reload_token_keys()
    assert await ack(feeder, old_b, new) == [INVALID, ACKED]


@STORES
async def test_tokens_of_the_database_secret_still_ack_after_the_switch_to_a_file(
    store_kind: str, key_file: Path, feeder_factory: FeederFactory, feeder_settings: Settings
) -> None:
    before = await feeder_factory(store_kind=store_kind)
    legacy_a, legacy_b = await tokens(before, 2)
    assert [key_of(t) for t in (legacy_a, legacy_b)] == [None, None]
    assert len(legacy_a) == 39  # version 2, exactly as without this feature
    if store_kind == "sqlite":
        await before.server.stop(0)  # one feeder per SQLite database
    after = await feeder_factory(
        store_kind=store_kind, settings=with_keys(feeder_settings, key_file)
    )
    [keyed] = await tokens(after, 1)
    assert key_of(keyed) == 1
    assert await ack(after, legacy_a) == [ACKED]
    # Still after the key it had is dropped: the database's secret stays in every ring.
    write_keys(key_file, 3, current=3)
    assert await after.service.reload_token_keys()
    assert await ack(after, legacy_b, keyed) == [ACKED, INVALID]


async def test_a_feeder_without_the_file_refuses_tokens_of_one_with_it(
    key_file: Path, feeder_factory: FeederFactory, feeder_settings: Settings
) -> None:
    """Why every feeder of a database needs the same keys: tokens are checked by whichever
    feeder the ack reaches."""
    keyed = await feeder_factory(
        store_kind="postgres", settings=with_keys(feeder_settings, key_file)
    )
    plain = await feeder_factory(store_kind="postgres")
    keyed_token, plain_token = await tokens(keyed, 2)
    [other] = await tokens(plain, 1)
    assert await ack(plain, keyed_token) == [INVALID]
    assert await ack(plain, other) == [ACKED]
    assert await ack(keyed, plain_token) == [ACKED]  # unkeyed tokens ack everywhere


async def test_a_cluster_turns_the_file_on_in_two_steps_with_no_token_refused(
    tmp_path: Path, feeder_factory: FeederFactory, feeder_settings: Settings
) -> None:
    """First every feeder gets the key unmarked (each verifies it, none signs with it),
    then the key is marked current: at no time does a feeder refuse another's token."""
    files = [tmp_path / "a-keys", tmp_path / "b-keys"]
    for path in files:
        write_keys(path, 1, current=None)
    a, b = [
        await feeder_factory(store_kind="postgres", settings=with_keys(feeder_settings, path))
        for path in files
    ]
    staged = await tokens(a, 1) + await tokens(b, 1)
    assert [key_of(t) for t in staged] == [None, None]
    write_keys(files[0], 1, current=1)  # one feeder marks it first
    assert await a.service.reload_token_keys()
    [signed_by_a] = await tokens(a, 1)
    [signed_by_b] = await tokens(b, 1)
    assert (key_of(signed_by_a), key_of(signed_by_b)) == (1, None)
    assert await ack(b, signed_by_a, staged[0]) == [ACKED, ACKED]
    assert await ack(a, signed_by_b, staged[1]) == [ACKED, ACKED]


async def test_a_malformed_rewrite_is_ignored_and_the_old_keys_kept(
    key_file: Path, feeder_factory: FeederFactory, feeder_settings: Settings
) -> None:
    feeder = await feeder_factory(
        store_kind="sqlite", settings=with_keys(feeder_settings, key_file)
    )
    held, spare = await tokens(feeder, 2)
    write_keys(key_file, 2, current=2, extra=f"2 {SECRETS[3].hex()}\n")  # key 2 twice
    assert not await feeder.service.reload_token_keys()
    [during] = await tokens(feeder, 1)
    assert key_of(during) == 1
    assert await ack(feeder, held, during) == [ACKED, ACKED]
    await asyncio.to_thread(key_file.unlink)
    assert not await feeder.service.reload_token_keys()
    assert await ack(feeder, spare) == [ACKED]
    write_keys(key_file, 1, 2, current=2)
    assert await feeder.service.reload_token_keys()
    assert key_of((await tokens(feeder, 1))[0]) == 2


async def test_the_running_feeder_watches_the_file(
    key_file: Path,
    feeder_factory: FeederFactory,
    feeder_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "KEY_FILE_CHECK", 0.05)
    feeder = await feeder_factory(
        store_kind="sqlite", settings=with_keys(feeder_settings, key_file)
    )
    [before] = await tokens(feeder, 1)
    write_keys(key_file, 1, 2, current=2)
    for _ in range(100):
        if feeder.service._codec.current_key_id == 2:
            break
        await asyncio.sleep(0.05)
    [after] = await tokens(feeder, 1)
    assert (key_of(before), key_of(after)) == (1, 2)
    assert await ack(feeder, before, after) == [ACKED, ACKED]


@STORES
async def test_a_malformed_file_stops_the_start_naming_the_file_and_line(
    store_kind: str,
    tmp_path: Path,
    feeder_settings: Settings,
    feeder_factory: FeederFactory,
) -> None:
    bad = tmp_path / "bad-keys"
    bad.write_text(f"# keys\n1 {SECRETS[1].hex()[:40]} current\n")
    settings = with_keys(feeder_settings, bad)
    if store_kind == "postgres":
        dsn = await feeder_factory.postgres_dsn()  # type: ignore[attr-defined]
        settings = dataclasses.replace(settings, db=dsn)
    for path, message in (
        (bad, f"token secret file {bad}, line 2: the secret of key 1 is 20 bytes"),
        (tmp_path / "missing", f"token secret file {tmp_path / 'missing'}: cannot read it"),
    ):
        settings = dataclasses.replace(settings, token_secret_file=str(path))
        server = FeederServer(settings, store=make_store(store_kind, settings))
        with pytest.raises(StartupError, match="token secret file") as raised:
            await server.start()
        assert str(raised.value).startswith(message)
    # Nothing was left open: a feeder starts on the same database.
    feeder = await feeder_factory(store_kind=store_kind)
    assert len(await tokens(feeder, 1)) == 1


def test_the_feeder_process_exits_1_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "keys"
    bad.write_text("1 00 current\n")
    done = subprocess.run(
        [sys.executable, "-m", "feeder", "--db", ":memory:", "--listen", "127.0.0.1:0"],
        env={**os.environ, "FEEDWORK_TOKEN_SECRET_FILE": str(bad)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert f"token secret file {bad}, line 1: the secret of key 1 is 1 bytes" in done.stderr
