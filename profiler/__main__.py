"""Entry point: ``python -m profiler --help``."""

import sys

from profiler.cli import main

if __name__ == "__main__":
    sys.exit(main())
