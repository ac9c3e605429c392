"""The rich console the command-line tools print their tables with."""

from __future__ import annotations

import sys


def console(stderr: bool = False):
    """A rich Console on stdout (or stderr). Piped to a file or a CI log there is no terminal to fit, and rich's
    80-column default would fold every cell of a wide table, so such output gets 200 columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200)
