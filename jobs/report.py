"""Draw (or redraw) a finished run's report: the entry point of ``deimos-ray report`` for
``ray job submit``; its flags and help: deimos_ray/commands/report.py.

    python jobs/report.py runs/train_dac-20261203-071500
"""

from __future__ import annotations

import sys

from deimos_ray.commands.report import main

if __name__ == "__main__":
    sys.exit(main())
