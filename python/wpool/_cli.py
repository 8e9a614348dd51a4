"""The ``wpool`` command installed by the wheel: runs the bundled executable."""

import os
import sys

from . import worker_program


def main() -> None:
    program = worker_program()
    if not os.access(program, os.X_OK):
        sys.exit(f"wpool: the bundled executable {program} is missing or not executable")
    os.execv(program, [program] + sys.argv[1:])
