"""Do the jobs, sweeps and assignments give the same clusterings as another checkout?

Runs every job through its command line on the built-in digits (seed 0, ``--smoke-test``
sizes), a sweep of each kind and the assignment of new images, then prints one digest
per output: a SHA-256 of the assignments table's contents (rows sorted by id, every
column, without the file metadata, which names folders). Run it on two checkouts and
compare::

    python bench/same_assignments.py --workdir /tmp/same-now --save now.json
    PYTHONPATH=/path/to/other/checkout python /path/to/other/checkout/bench/same_assignments.py \\
        --workdir /tmp/same-then --save then.json
    python bench/same_assignments.py --compare then.json now.json

The command lines are the jobs' public ones, so the same script serves any version
that has them. About ten minutes on 2 CPUs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent

# (case, command line relative to ROOT with {W} for the work folder, output folder)
CASES = [
    ("dac", "jobs/train_dac.py --smoke-test --out {W}/dac", "dac"),
    ("dac, 2 restarts, merge", "jobs/train_dac.py --smoke-test --restarts 2 --min-cluster-size 5 "
     "--out {W}/dac_r", "dac_r"),
    ("dec", "jobs/train_dec.py --smoke-test --out {W}/dec", "dec"),
    ("idec", "jobs/train_dec.py --smoke-test --variant idec --out {W}/idec", "idec"),
    ("desom", "jobs/train_desom.py --smoke-test --out {W}/desom", "desom"),
    ("desom, 2 restarts, k 5", "jobs/train_desom.py --smoke-test --restarts 2 --k 5 --out {W}/desom_r",
     "desom_r"),
    ("desom, 2 levels", "jobs/train_desom.py --smoke-test --tile 4 --levels 2 --out {W}/desom_l2",
     "desom_l2"),
    ("sweep dec k 3 4", "jobs/tune_sweep.py --algorithm dec --k 3 4 --smoke-test --out {W}/sweep_dec",
     "sweep_dec"),
    ("sweep dac k 3 4, 2 restarts", "jobs/tune_sweep.py --algorithm dac --k 3 4 --restarts-per-trial 2 "
     "--smoke-test --out {W}/sweep_dac", "sweep_dac"),
    ("assign with dec", "jobs/assign.py --run {W}/dec --data digits --out {W}/assign_dec", "assign_dec"),
    ("assign with dac restarts", "jobs/assign.py --run {W}/dac_r --data digits --out {W}/assign_dac_r",
     "assign_dac_r"),
    ("assign with desom restarts", "jobs/assign.py --run {W}/desom_r --data digits --out {W}/assign_desom_r",
     "assign_desom_r"),
]


def digest(path: Path) -> str:
    """SHA-256 of a Parquet folder's or file's rows (sorted by the first column that
    names them), every column, without the file metadata."""
    table = pq.read_table(path)
    key = "id" if "id" in table.column_names else table.column_names[0]
    table = table.sort_by(key).replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def run_cases(workdir: Path, only: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Run every case (or those whose name contains one of ``only``, with the cases
    they assign with); return {case: {output: digest}}."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    found: dict[str, dict[str, str]] = {}
    chosen = [c for c in CASES if not only or any(word in c[0] for word in only)]
    needed = {folder for _, command, _ in chosen for folder in command.split("--run {W}/")[1:2]}
    needed = {n.split()[0] for n in needed}
    for case, command, folder in CASES:
        if (case, command, folder) not in chosen and folder not in needed:
            continue
        t = time.perf_counter()
        argv = [sys.executable, *command.format(W=workdir).split()]
        done = subprocess.run(argv, cwd=ROOT, env=os.environ, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{case}: exit {done.returncode}\n{done.stderr[-3000:]}", file=sys.stderr)
            found[case] = {"error": f"exit {done.returncode}"}
            continue
        run = workdir / folder
        found[case] = {"assignments": digest(run / "assignments")}
        if (run / "groups.parquet").is_file():
            found[case]["groups.parquet"] = digest(run / "groups.parquet")
        print(f"{case}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return found


def compare(then: dict[str, dict[str, str]], now: dict[str, dict[str, str]]) -> bool:
    """Print the side-by-side table; True when every output is the same."""
    print("| case | output | before | after | same |\n|---|---|---|---|---|")
    same = True
    for case in dict.fromkeys([*then, *now]):
        for output in dict.fromkeys([*then.get(case, {}), *now.get(case, {})]):
            a, b = then.get(case, {}).get(output, "-"), now.get(case, {}).get(output, "-")
            same &= a == b and a != "-"
            print(f"| {case} | {output} | {a[:16]} | {b[:16]} | {'yes' if a == b else 'NO'} |")
    return same


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/same_assignments"))
    p.add_argument("--save", type=Path, help="write the digests to this JSON file")
    p.add_argument("--only", nargs="+", metavar="WORD", help="only the cases whose name has one of these words")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                   help="print two saved digest files side by side, run nothing")
    args = p.parse_args()
    if args.compare:
        then, now = (json.loads(path.read_text()) for path in args.compare)
        return 0 if compare(then, now) else 1
    found = run_cases(args.workdir.resolve(), args.only)
    if args.save:
        args.save.write_text(json.dumps(found, indent=2))
    for case, outputs in found.items():
        for output, value in outputs.items():
            print(f"{case:32s} {output:16s} {value[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
