"""The ``calgate`` command line (docs/interfaces.md)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from gateway import commands
from gateway.installation import docs_dir

__all__ = [
    "EX_CONFIG",
    "EX_USAGE",
    "build_parser",
    "configure_logging",
    "main",
    "report_errors",
]

EX_USAGE = 64  # sysexits.h: bad command line (an unknown equipment id, a bad value)
EX_CONFIG = 78  # sysexits.h: configuration error


def report_errors(errors: Sequence[str]) -> int:
    """Print every error (``file: path.to.field: message``) and their count on stderr;
    return EX_CONFIG, the exit code of a bad config, procedure or registry."""
    for line in errors:
        print(line, file=sys.stderr)
    print(f"{len(errors)} error(s)", file=sys.stderr)
    return EX_CONFIG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calgate",
        description="Edge gateway for metrology labs: traceable, corrected measurements "
        "with GUM uncertainty, over MQTT and into InfluxDB.",
        epilog=f"Reference (registry format, MQTT/InfluxDB/HTTP contracts, simulators): "
        f"{docs_dir() / 'README.md'}",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def rank(name: str) -> tuple[int, str]:
        return (commands.ORDER.index(name) if name in commands.ORDER else len(commands.ORDER), name)

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: rank(i.name)):
        module = importlib.import_module(f"gateway.commands.{info.name}")
        module.register(sub)
    describe(parser)
    return parser


def describe(parser: argparse.ArgumentParser) -> None:
    """A (sub)command's ``--help`` without a description of its own opens with the line
    its parent's list gives it (``calgate run --help`` said only its usage)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, child in action.choices.items():
                if child.description is None and (line := helps.get(name)):
                    child.description = f"{line[0].upper()}{line[1:]}."
                describe(child)


def configure_logging(verbose: int, *, service: bool) -> None:
    """Warnings by default; the service logs its state transitions (INFO); ``-v`` adds
    INFO, ``-vv`` DEBUG (every poll). The protocol libraries' own chatter (asyncua logs a
    traceback for every dropped connection; the drivers report it once, typed) is shown
    only with ``-vv``."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if service and verbose == 0:
        for name in ("gateway", "drivers", "calibration"):
            logging.getLogger(name).setLevel(logging.INFO)
    if verbose < 2:
        for name in ("asyncua", "pymodbus"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    from gateway.installation import shadowing

    clashes = shadowing()
    if clashes:  # another distribution's package would run in place of calgate's
        for line in clashes:
            print(f"calgate: {line}", file=sys.stderr)
        print(
            "calgate: refusing to run: install calgate into its own virtual environment "
            "(python3 -m venv /opt/calgate; or pipx)",
            file=sys.stderr,
        )
        return EX_CONFIG
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, service=args.command == "run")
    if args.command == "run":
        import faulthandler

        faulthandler.enable()  # a watchdog kill (SIGABRT) leaves a traceback in the journal
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader went away (`calgate registry check DIR | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE, as a shell reports a writer killed by the signal
    return code


if __name__ == "__main__":
    sys.exit(main())
