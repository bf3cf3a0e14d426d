"""Plumbing shared by the `cyseg` and `cydata` command lines: logging to the current stderr and a
click group that reports user errors as one line with exit status 2."""
from __future__ import annotations

import logging
import os
import sys

import click

from segmenter.errors import CysegError, one_line


class _StderrHandler(logging.StreamHandler):
    """Writes to the current sys.stderr (which click's test runner swaps), not the one at start-up."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(prog: str, level: int) -> None:
    """Log `prog: message` lines to stderr at `level` (idempotent)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        root.addHandler(handler)
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    handler.setLevel(level)
    root.setLevel(level)


def verbosity(verbose: bool, quiet: bool) -> int:
    """The logging level of the -v / -q flags."""
    return logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO


class ErrorReportingGroup(click.Group):
    """A click group that reports `CysegError` (and OS errors such as a full disk) as one line
    `<prog>: error: <message>` and exits 2, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CysegError as exc:
            fail(ctx.find_root().info_name or "cyseg", one_line(exc))
            ctx.exit(2)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            fail(ctx.find_root().info_name or "cyseg", one_line(click.ClickException(exc.format_message())) + hint)
            ctx.exit(2)
        except BrokenPipeError:
            quiet_broken_pipe(ctx)
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            fail(ctx.find_root().info_name or "cyseg", f"{where}{exc.strerror or one_line(exc)}")
            ctx.exit(2)


def quiet_broken_pipe(ctx: click.Context) -> None:
    """The reader of stdout went away (`cyseg evaluate ... | head -1`): the work is done, so exit as
    a process killed by SIGPIPE would (status 141), without an error line or Python's complaint
    when it flushes stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    ctx.exit(141)


def fail(prog: str, message: str) -> None:
    """Print the one-line error."""
    click.echo(f"{prog}: error: {message}", err=True)


def run_main(group: click.Group, prog: str, argv: list[str] | None = None) -> None:
    """Console-script entry: run the group, reporting stray user errors as one line, exit 2."""
    try:
        group.main(args=argv, prog_name=prog)
    except CysegError as exc:
        fail(prog, one_line(exc))
        sys.exit(2)
