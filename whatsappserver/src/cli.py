"""Command line: `python -m src.cli --help` (run from whatsappserver/). Every operation a user needs has a command.

Each concern registers its commands from its own module in `src/commands/`, so this file only assembles them.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import src.commands

cli = typer.Typer(
    name="whatsappserver",
    help="WhatsApp watch-market server: extract, ingest, search and operate from the command line.",
    no_args_is_help=True,
    add_completion=False,
)


def _register_commands() -> None:
    """Import every module in src/commands; each exposes `register(cli)`."""
    for module_info in sorted(pkgutil.iter_modules(src.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"src.commands.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(cli)


_register_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
