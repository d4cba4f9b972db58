"""What a user waits for and reads at the console: how long ``deimos-ray --help``,
``--version`` and a subcommand's help take to answer (median of several fresh
processes), and with ``--run`` how many lines ``make run``'s job prints without and with
``-v`` (no terminal, as in CI or ``ray job submit`` logs).

    .venv/bin/python bench/console.py            # start times only (about a minute)
    .venv/bin/python bench/console.py --run      # and the lines of two full DAC runs (about 8 minutes)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [str(Path(sys.executable).parent / "deimos-ray")]  # the installed console script
CASES = [("deimos-ray --help", ["--help"]), ("deimos-ray --version", ["--version"]),
         ("deimos-ray train dec --help", ["train", "dec", "--help"]),
         ("deimos-ray train dec --k 5000 (refused)", ["train", "dec", "--k", "5000"])]


def seconds(argv: list[str]) -> float:
    """Wall time of one fresh ``deimos-ray argv`` process."""
    t0 = time.perf_counter()
    subprocess.run([*COMMAND, *argv], cwd=ROOT, capture_output=True, check=False)
    return time.perf_counter() - t0


def lines_of_a_run(verbose: bool) -> tuple[int, int]:
    """(lines printed, exit status) of ``make run``'s job (DAC on the digits)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [*COMMAND, "train", "dac", "--out", str(Path(tmp) / "run"), *(["-v"] if verbose else [])]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    return len((done.stdout + done.stderr).splitlines()), done.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--run", action="store_true", help="also count the lines of make run's job")
    args = p.parse_args()
    print(f"{'command':<42}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, argv in CASES:
        times = [seconds(argv) for _ in range(args.repeats)]
        print(f"{name:<42}{statistics.median(times):>10.2f}{min(times):>8.2f}{max(times):>8.2f}")
    if args.run:
        print(f"\n{'make run job (DAC, digits)':<42}{'lines':>10}{'status':>8}")
        for verbose in (False, True):
            lines, status = lines_of_a_run(verbose)
            print(f"{'deimos-ray train dac' + (' -v' if verbose else ''):<42}{lines:>10}{status:>8}")


if __name__ == "__main__":
    main()
