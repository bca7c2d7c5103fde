"""`python -m feeder`: run the feeder until SIGTERM or SIGINT.

`feedwork feeder` reuses `build_parser` and `main`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from feeder.config import (
    CONFIG_OPTION,
    OPTIONS,
    ConfigError,
    Option,
    default_text,
    load_settings,
    parse_bool,
)
from feeder.server.app import StartupError, serve
from feedwork import logs

EXIT_STARTUP_FAILED = 1
EXIT_BAD_CONFIG = 2

_EPILOG = """\
Each option can also be set by the environment variable shown, or in the config file
(--config): process options under [feeder], queue policy under [queues.default] (every
queue) and [queues.NAME] (one queue). Flags beat variables, variables beat the file.
Durations are seconds or e.g. 500ms, 30s, 2m, 1h; sizes are bytes or e.g. 512KiB, 8MiB.
Exit status: 0 after a clean shutdown, 1 if the feeder could not start, 2 for bad
configuration.
"""


def _help(option: Option) -> str:
    default = default_text(option)
    shown = "" if default is None else f"; default {default}"
    return f"{option.help} [{option.env}{shown}]"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m feeder",
        description="The feedwork feeder: a durable work queue served over gRPC.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        CONFIG_OPTION.flag,
        dest=CONFIG_OPTION.name,
        metavar=CONFIG_OPTION.metavar,
        help=f"{CONFIG_OPTION.help} [{CONFIG_OPTION.env}]",
    )
    process = parser.add_argument_group("process options ([feeder] in the config file)")
    policy = parser.add_argument_group(
        "queue policy defaults ([queues.default] in the config file)"
    )
    for option in OPTIONS:
        group = process if option.table == "feeder" else policy
        if option.parse is parse_bool:  # a switch: given means true
            group.add_argument(
                option.flag, dest=option.name, action="store_const", const=True, help=_help(option)
            )
            continue
        group.add_argument(
            option.flag, dest=option.name, metavar=option.metavar, help=_help(option)
        )
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        settings = load_settings(vars(args))
    except ConfigError as exc:
        print(f"feeder: configuration error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        logging.getLogger("feedwork.feeder").error("%s", exc)
        return EXIT_STARTUP_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
