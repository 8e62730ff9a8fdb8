"""``python -m leaderelection``: the command line, which lives in :mod:`leaderelection.cli`."""

from __future__ import annotations

import sys

from leaderelection.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
