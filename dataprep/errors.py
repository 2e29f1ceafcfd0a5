"""Errors, and how every command line of the toolkit reports them (one convention for
`dataprep`, `trainer_bridge.train`, `trainer_bridge.launcher` and `trainer_bridge.convert`):

    exit 0     done
    exit 2     an expected error (bad input, options, files): ``error: <one line>`` on stderr
    exit 1     anything unexpected: ``error: <Type>: <message> (run with --debug for the traceback)``
    exit 130   interrupted (Ctrl-C): one line saying what was kept

``--debug`` (or ``DATAPREP_DEBUG=1`` in the environment, for commands started by a launcher)
shows the traceback instead of the one line.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

EXIT_ERROR = 2
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130


class DataprepError(Exception):
    """An error the user can act on; the CLI prints its message as one line and exits 2."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` among the arguments, or ``DATAPREP_DEBUG`` set to anything but 0/empty."""
    return "--debug" in (sys.argv[1:] if argv is None else argv) or \
        os.environ.get("DATAPREP_DEBUG", "") not in ("", "0")


def run_command(body: Callable[[], int | None], *, debug: bool,
                expected: tuple[type[BaseException], ...] = (DataprepError,),
                interrupted: str = "interrupted") -> int:
    """``body()``'s exit code, with every error reported as the module docstring says.
    `expected` are the exception types whose message alone is the error line."""
    try:
        return body() or 0
    except expected as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_UNEXPECTED
    except Exception as exc:  # anything unexpected: one line, the traceback with --debug
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_UNEXPECTED
