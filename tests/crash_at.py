"""Run a job script with a crash at one rename: ``python tests/crash_at.py NAME SCRIPT ARGS...``
ends the process (exit :data:`EXIT_CODE`) just before the file or folder called ``NAME``
is renamed into place, through the package's test hook (``deimos_ray.files.BEFORE_RENAME``)."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from deimos_ray import files

EXIT_CODE = 70


def main() -> None:
    name, script, *argv = sys.argv[1:]

    def crash(destination: Path) -> None:
        if destination.name == name:
            os._exit(EXIT_CODE)

    files.BEFORE_RENAME.append(crash)
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
