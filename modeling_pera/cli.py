# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""What the example scripts share as command-line programs: user mistakes read as one message, a stopped run as the
command that resumes it, and `--help` shows each default once.

A user's mistake (a wrong flag value, a folder that holds no usable images, a missing checkpoint) is reported by the
package as a `ValueError` (or one of its subclasses: `CheckpointError`, `RasterReadError`, ...) raised in the
package's own code, or as an `OSError` (a file that is missing or unreadable). `run_cli` prints such an error as
`error: <message>` and exits with status 1; anything else (a programming error) keeps its traceback. Set
`PERA_DEBUG=1` to see the traceback of every error.
"""

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path


DEBUG_VARIABLE = "PERA_DEBUG"
PACKAGE_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = PACKAGE_DIR.parent / "examples"


class TrainingStopped(Exception):
    """A run stopped by SIGINT or SIGTERM after writing a checkpoint; the message says how to resume."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


def is_user_error(error: BaseException) -> bool:
    """Errors the package raises about its input, and files that cannot be read: not bugs, so no traceback."""
    if isinstance(error, OSError):
        return True
    if not isinstance(error, (ValueError, TypeError, FloatingPointError)):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    # Where the error was raised: a ValueError from inside torch or PIL is a bug to report with its traceback.
    raised_in = Path(frames[-1].filename).resolve() if frames else None
    return raised_in is not None and (raised_in.is_relative_to(PACKAGE_DIR) or raised_in.is_relative_to(EXAMPLES_DIR))


def run_cli(main: Callable[[], object]) -> None:
    """Runs an example script's `main`: user errors print one line, Ctrl-C stops without a traceback."""
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        main()
        return
    try:
        main()
    except TrainingStopped as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(128 + stopped.signal_number)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if not is_user_error(error):
            raise
        print(f"error: {error}\n(set {DEBUG_VARIABLE}=1 to see the traceback)", file=sys.stderr)
        sys.exit(1)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends each flag's default once: not when the help already names it,
    and not when it is None (a default that the help explains, such as "the recipe's")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if (
            "default" in help_text
            or action.default in (None, argparse.SUPPRESS, False)
            or action.option_strings == []
            or action.nargs == 0
        ):
            return help_text
        return f"{help_text} (default: {action.default})"
