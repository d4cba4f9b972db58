"""``deimos-ray``: one installed command with a subcommand per task.

    deimos-ray train dac|dec|desom [flags]   train on a set of images (jobs/train_*.py)
    deimos-ray sweep --algorithm NAME ...    choose k and settings with Ray Tune
    deimos-ray assign --run DIR --data ...   put new images into a finished run's clusters
    deimos-ray report DIR                    draw (or redraw) a run's report
    deimos-ray export DIR --csv F | --folders D   take a run's clusters elsewhere

This module imports nothing heavy: ``deimos-ray --help`` and ``--version`` answer before
torch or Ray is loaded; a subcommand's module is imported when it runs. ``jobs/*.py``
(for ``ray job submit``) use the same parsers.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Iterable

from deimos_ray import __version__

PROG = "deimos-ray"
# name: (module with main(argv, prog) -> int, one line for the overview)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("deimos_ray.commands.train", "train DAC, DEC or DESOM on a set of images (train dac --help)"),
    "sweep": ("deimos_ray.commands.sweep", "choose the number of clusters and other settings with Ray Tune"),
    "assign": ("deimos_ray.commands.assign", "put new images into the clusters of a finished run"),
    "report": ("deimos_ray.commands.report", "draw (or redraw) a finished run's report pages"),
    "export": ("deimos_ray.commands.export", "write a run's clusters as CSV or as one folder per cluster"),
}

USAGE = f"""usage: {PROG} [--version] [--help] COMMAND [ARGS]

Deep clustering (DAC, DEC/IDEC, DESOM) of unlabelled image collections on Ray.

commands:
{chr(10).join(f"  {name:<8}{line}" for name, (_, line) in COMMANDS.items())}

'{PROG} COMMAND --help' shows a command's flags. Start with:
  {PROG} train dac --smoke-test          checks the installation in about a minute
  {PROG} train dec --data MY_IMAGES/ --backbone efficientnet_lite0 --k 8
"""


def unknown(what: str, name: str, choices: Iterable[str]) -> int:
    """Say on one line that ``name`` is no known ``what``, with the nearest of ``choices``
    (or all of them); the exit status of a usage error."""
    near = difflib.get_close_matches(name, list(choices), n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"one of: {', '.join(choices)}"
    print(f"error: unknown {what} {name!r}; {hint}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """The ``deimos-ray`` console script: dispatch to a subcommand's ``main``.

    Exit status: 0 done, 2 a usage error (one line), 1 a failure, 130/143 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"{PROG} {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        return unknown("command", name, COMMANDS)
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(argv[1:], prog=f"{PROG} {name}")


if __name__ == "__main__":
    sys.exit(main())
