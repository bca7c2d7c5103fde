"""`feedwork db`: the operator's commands for a feeder's database.

    feedwork db status  --db postgresql://...   schema version, applied and pending migrations
    feedwork db migrate --db postgresql://...   applies pending migrations (feeders also do
                                                this when they start)
    feedwork db copy --from ./feedwork.db --to postgresql://...
                                                moves a stopped SQLite feeder's data into an
                                                empty PostgreSQL database, and verifies it
    feedwork db token-key [--id N] [--current]  prints a new lease-token key line
    feedwork db token-key --file PATH [--current]
                                                adds a new key to a token secret file (made
                                                0600 if absent)
    feedwork db token-file PATH                 checks a token secret file: its key ids and
                                                the current one (never the secrets)

Exit status: 0 done (status: the schema is current), 1 failed (status: migrations are
pending, or the database is newer than this feedwork), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import asyncpg

from feeder.config import ENV_PREFIX, redact_url
from feeder.core.tokens import MAX_KEY_ID
from feeder.service.token_keys import (
    TokenKeyFileError,
    describe,
    key_line,
    new_secret,
    read_key_file,
    write_new_key,
)
from feeder.store.postgres import SchemaTooNew, is_postgres_url
from feeder.store.postgres.migrate import migrate, status
from feeder.store.transfer import CopyError, copy_sqlite_to_postgres

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser(prog: str = "feedwork db") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Inspect, migrate and copy feeder databases; make lease-token keys.",
        epilog="Exit status: 0 ok, 1 failed (or, for status, not current), 2 usage error.",
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    default_db = os.environ.get(f"{ENV_PREFIX}DB")
    for name, summary in (
        ("status", "show the schema version and pending migrations"),
        ("migrate", "apply pending schema migrations"),
    ):
        command = commands.add_parser(name, help=summary, description=summary)
        command.add_argument(
            "--db",
            default=default_db,
            metavar="URL",
            help=f"postgresql://USER@HOST:PORT/DBNAME (default: ${ENV_PREFIX}DB)",
        )
    copy = commands.add_parser(
        "copy",
        help="copy a stopped SQLite feeder's database into PostgreSQL",
        description=(
            "Copies every task (every state, payloads, results, history), idempotency key,"
            " total, the next task id and the token secret from a SQLite database that no"
            " feeder has open into an empty PostgreSQL database, then verifies the counts;"
            " on any mismatch nothing is written."
        ),
    )
    copy.add_argument("--from", dest="source", required=True, metavar="PATH", help="SQLite file")
    copy.add_argument("--to", dest="target", required=True, metavar="URL", help="PostgreSQL URL")
    copy.add_argument(
        "--new-secret",
        action="store_true",
        help="keep the target's own token secret: leases from before the copy become invalid",
    )
    _add_token_commands(commands)
    return parser


def _add_token_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = commands.add_parser(
        "token-key",
        help="make a lease-token key for --token-secret-file",
        description=(
            "Prints a new random key line (KEY_ID HEX-SECRET [current]) for a feeder's"
            " --token-secret-file, or with --file adds one to that file (made with mode 0600"
            " if absent). Mark a key current once every feeder's file has it: --current"
            " does, in a file where no key is current yet; otherwise move the word by hand."
        ),
    )
    key.add_argument("--id", dest="key_id", type=_key_id, metavar="N", help="key id (1-255)")
    key.add_argument("--current", action="store_true", help="mark the new key current")
    key.add_argument("--file", metavar="PATH", help="add the key to this file instead")
    check = commands.add_parser(
        "token-file",
        help="check a token secret file",
        description="Checks a token secret file as a feeder reads it; prints its key ids and"
        " the current key, never a secret.",
    )
    check.add_argument("path", metavar="PATH")


def _key_id(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_KEY_ID:
        raise argparse.ArgumentTypeError(f"want a number from 1 to {MAX_KEY_ID}")
    return int(text)


def _token_command(args: argparse.Namespace) -> int:
    try:
        if args.command == "token-file":
            ring, _ = read_key_file(args.path)
            print(f"{args.path}: {describe(ring)}")
        elif args.file is None:
            print(key_line(args.key_id or 1, new_secret(), current=args.current))
        else:
            key_id = write_new_key(args.file, args.key_id, current=args.current)
            print(f"{args.file}: added key {key_id}" + (" (current)" if args.current else ""))
            if not args.current:
                print(
                    f"  not current yet: once every feeder's file has key {key_id}, put the"
                    " word 'current' on its line (moving it from the old key's line, if any)"
                )
    except (TokenKeyFileError, ValueError, OSError) as exc:
        print(f"feedwork db: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None, *, prog: str = "feedwork db") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command in ("token-key", "token-file"):
        return _token_command(args)
    url = args.db if args.command in ("status", "migrate") else args.target
    if not url or not is_postgres_url(url):
        flag = "--db" if args.command in ("status", "migrate") else "--to"
        print(f"feedwork db: {flag} must be a postgresql:// URL", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_run(args))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(f"feedwork db: cannot use {redact_url(url)}: {exc}", file=sys.stderr)
    except (SchemaTooNew, CopyError) as exc:
        print(f"feedwork db: {exc}", file=sys.stderr)
    return EXIT_FAILED


async def _run(args: argparse.Namespace) -> int:
    if args.command == "copy":
        report = await copy_sqlite_to_postgres(
            args.source, args.target, carry_secret=not args.new_secret
        )
        states = sorted(report.by_state.items(), key=lambda item: (item[0][0], item[0][1]))
        print(f"copied {report.tasks} tasks into {redact_url(args.target)}:")
        for (queue, state), count in states:
            print(f"  {queue}: {count} {state.name.lower()}")
        print(f"  {report.keys} idempotency keys, totals of {len(report.totals)} counters")
        if report.paused:
            print(f"  paused queues: {', '.join(sorted(report.paused))}")
        print(f"  next task id {report.next_id}; token secret", end=" ")
        print("carried over" if report.secret_carried else "not carried over (--new-secret)")
        print("verified: every count matches the source")
        return EXIT_OK
    conn = await asyncpg.connect(args.db, timeout=10)
    try:
        if args.command == "migrate":
            applied = await migrate(conn)
            for migration in applied:
                print(f"applied {migration.version:04d}_{migration.name}")
            found = await status(conn)
            print(f"schema version {found.version}: up to date")
            return EXIT_OK
        found = await status(conn)
    finally:
        await conn.close()
    print(f"database {redact_url(args.db)}: schema version {found.version}")
    for done in found.applied:
        print(f"  applied {done.version:04d}_{done.name} at {done.applied_at:%Y-%m-%d %H:%M:%S %Z}")
    for pending in found.pending:
        print(f"  pending {pending.version:04d}_{pending.name}")
    if found.unknown:
        print("  migrated by a newer feedwork: upgrade this one before using it")
    elif not found.pending:
        print("  up to date")
    return EXIT_OK if found.current else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
