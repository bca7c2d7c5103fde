"""`feedwork keys`: API keys and the access list (docs/SECURITY.md).

    feedwork keys new NAME ROLE[:PATTERN]... [--out FILE]
        makes a key, writes it to FILE (0600) or prints it, and prints the access list
        line that grants it the roles; the feeder keeps only that line (the key's hash)
    feedwork keys hash [--name NAME ROLE...]
        the line for a key read from standard input (one made elsewhere)
    feedwork keys check FILE
        reads an access list as the feeder would and lists who may do what

Exit status: 0 done, 1 failed (check: the list is not valid), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from feeder.server.access import AccessError, Principal, parse_access_list
from feedwork.apikeys import key_hash, new_key

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
KEY_FILE_MODE = 0o600


def build_parser(prog: str = "feedwork keys") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Make API keys and check access lists.",
        epilog="Roles: producer, worker, admin; each optionally :QUEUE-PATTERN (shell-style).",
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    new = commands.add_parser("new", help="make a key and its access list line")
    new.add_argument("name", help="the identity the feeder records for this key")
    new.add_argument("roles", nargs="+", metavar="ROLE[:PATTERN]")
    new.add_argument("--out", metavar="FILE", help="write the key here (0600), not to stdout")
    hashed = commands.add_parser("hash", help="the access list line of a key read from stdin")
    hashed.add_argument("name", nargs="?", default="NAME")
    hashed.add_argument("roles", nargs="*", metavar="ROLE[:PATTERN]")
    check = commands.add_parser("check", help="read an access list and say who may do what")
    check.add_argument("file")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "feedwork keys") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        if args.command == "new":
            return _new(args.name, args.roles, args.out)
        if args.command == "hash":
            key = sys.stdin.readline().strip()
            if not key:
                raise AccessError("no key on standard input")
            print(_line(args.name, key, args.roles or ["ROLE"], check=bool(args.roles)))
            return EXIT_OK
        return _check(args.file)
    except AccessError as exc:
        print(f"feedwork keys: {exc}", file=sys.stderr)
        return EXIT_USAGE if args.command != "check" else EXIT_FAILED
    except OSError as exc:
        print(f"feedwork keys: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED


def _new(name: str, roles: list[str], out: str | None) -> int:
    key = new_key()
    line = _line(name, key, roles, check=True)
    if out is None:
        print(f"key (shown once; give it to the client): {key}")
    else:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        with os.fdopen(fd, "w") as file:
            file.write(key + "\n")
        print(f"key written to {out} (0600); clients: --api-key-file {out}")
    print("access list line (add it to the feeder's --auth-file):")
    print(line)
    return EXIT_OK


def _line(name: str, key: str, roles: list[str], *, check: bool) -> str:
    line = f"{name} {key_hash(key)} {' '.join(roles)}"
    if check:
        parse_access_list(line, "the new entry")  # the feeder's own rules
    return line


def _check(path: str) -> int:
    with open(path, encoding="utf-8") as file:
        access = parse_access_list(file.read(), path)
    entries: list[tuple[str, Principal]] = [
        *(("key", p) for p in access.by_key_digest.values()),
        *((f"cert:{identity}", p) for identity, p in access.by_certificate.items()),
    ]
    for kind, principal in sorted(entries, key=lambda entry: entry[1].name):
        print(f"{principal.name:<24} {kind:<24} {' '.join(map(str, principal.grants))}")
    print(f"{path}: {len(entries)} entries, valid")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
