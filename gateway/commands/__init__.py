"""CLI subcommands: each module here defines ``register(subparsers)``.

A module adds its subcommand(s) with ``subparsers.add_parser(...)`` and sets
``func=`` (taking the parsed ``argparse.Namespace``, returning the exit code) through
``set_defaults``. Modules are discovered, so adding a command touches no other file.
"""
