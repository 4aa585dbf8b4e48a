"""The ``bfx`` command: console script ``bfx`` and ``python -m airflow_provider_bfx.cli.main``.

Each verb is a module of this package, listed in :data:`COMMAND_MODULES`, with

    def register(subparsers: argparse._SubParsersAction) -> None

that adds its parser and sets ``func`` (``parser.set_defaults(func=run)``), a function taking the
parsed arguments and returning the exit code. Every verb keeps three rules:

* Airflow (and anything slow to import) is imported inside ``func``, never at module level, so
  that ``bfx --help`` and ``bfx catalog ddl`` work on a machine without a configured Airflow;
* a failure the user can fix raises :class:`CliError`, or lets :class:`CatalogSchemaError` or a
  SQLAlchemy error through: :func:`main` prints it as one line on stderr, not a traceback;
* exit codes: ``0`` done, ``1`` failed (:data:`EXIT_FAILED`), ``2`` bad usage
  (:data:`EXIT_USAGE`, as argparse does).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

from sqlalchemy.exc import SQLAlchemyError

from airflow_provider_bfx.catalog.errors import CatalogMisconfiguredError, CatalogUnavailableError
from airflow_provider_bfx.catalog.migrate import PRODUCT, head_revision
from airflow_provider_bfx.exceptions import BfxError

#: The modules that each add one verb (see the module docstring).
COMMAND_MODULES: tuple[str, ...] = (
    "airflow_provider_bfx.cli.catalog",
    "airflow_provider_bfx.cli.demo",
    "airflow_provider_bfx.cli.operations",
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(BfxError):
    """A failure the user can act on, printed as ``bfx: error: <message>``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def error_line(exc: BaseException) -> str:
    """The first line of what the driver said (SQLAlchemy appends SQL and a help link)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def package_version() -> str:
    try:
        return version(PRODUCT)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (the full usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _VersionAction(argparse.Action):
    """``--version``, computed only when asked for (it reads the migrations directory)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the package version and catalog schema revision, and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        print(f"bfx ({PRODUCT} {package_version()}, catalog schema revision {head_revision()})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bfx",
        description="Restart and recovery for Airflow tasks: manage the bfx catalog.",
    )
    parser.add_argument("--version", action=_VersionAction, dest=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``bfx`` with ``argv`` (default: the process arguments); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # Resolve connections as Airflow's own CLI does (``airflow connections``): a command-line
    # process is a server context, whose secrets backends include the metadata DB. Without it
    # a connection added with ``airflow connections add`` is invisible and the embedded default
    # would be used in its place (docs/decisions/0080).
    os.environ.setdefault("_AIRFLOW_PROCESS_CONTEXT", "server")
    try:
        return int(func(args))
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except (CatalogMisconfiguredError, CatalogUnavailableError) as exc:
        # A missing schema, a wrong password, an unreachable server: the message says which
        # and how to fix it (decision 0090); no traceback.
        return _fail(str(exc), EXIT_FAILED)
    except SQLAlchemyError as exc:
        return _fail(f"catalog database error: {error_line(exc)}", EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, code: int) -> int:
    print(f"bfx: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    # Through the package module, not this __main__ copy, so that the verbs' CliError (imported
    # from airflow_provider_bfx.cli.main) is the class main() catches.
    from airflow_provider_bfx.cli.main import main as _main

    raise SystemExit(_main())
