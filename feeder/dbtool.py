"""`feedwork db`: the operator's commands for a feeder's database.

    feedwork db status  --db postgresql://...   schema version, applied and pending migrations
    feedwork db migrate --db postgresql://...   applies pending migrations (feeders also do
                                                this when they start)
    feedwork db copy --from ./feedwork.db --to postgresql://...
                                                moves a stopped SQLite feeder's data into an
                                                empty PostgreSQL database, and verifies it

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
from feeder.store.postgres import SchemaTooNew, is_postgres_url
from feeder.store.postgres.migrate import migrate, status
from feeder.store.transfer import CopyError, copy_sqlite_to_postgres

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser(prog: str = "feedwork db") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Inspect, migrate and copy feeder databases.",
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
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "feedwork db") -> int:
    args = build_parser(prog).parse_args(argv)
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
