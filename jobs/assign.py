"""Put new images into the clusters of a finished run: the entry point of
``deimos-ray assign`` for ``ray job submit``; its flags and help:
deimos_ray/commands/assign.py.

    ray job submit --working-dir . -- python jobs/assign.py --run /shared/runs/dac \
        --data /shared/new_tiles --out /shared/runs/dac-new
"""

from __future__ import annotations

import sys

from deimos_ray.commands.assign import main

if __name__ == "__main__":
    sys.exit(main())
