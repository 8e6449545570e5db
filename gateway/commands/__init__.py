"""CLI subcommands: each module here defines ``register(subparsers)``.

A module adds its subcommand(s) with ``subparsers.add_parser(...)`` and sets
``func=`` (taking the parsed ``argparse.Namespace``, returning the exit code) through
``set_defaults``. Modules are discovered, so adding a command touches no other file.

``calgate --help`` lists them in ``ORDER`` (a new user's path: try it, run it, look into
the registry, then the quality team's tools); a module not in it comes after, by name.
"""

ORDER = ("demo", "ops", "registry", "correct", "impact", "calibrate", "simulate")
