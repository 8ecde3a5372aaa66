"""The `precisionlab` console script: imports the CLI (torch, Hydra, pandas: most of a second)
and runs it, with Ctrl-C at any moment as one line on stderr and exit code 130 (128 + SIGINT),
never a KeyboardInterrupt traceback. A run interrupted so is found `running` with no live
process by the next sweep or train, which reruns it from its last checkpoint."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from precisionlab.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
