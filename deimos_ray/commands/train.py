"""``deimos-ray train ALGORITHM [flags]``: one training job (the flags of
``jobs/train_<algorithm>.py``, from :func:`deimos_ray.cli.job_parser`)."""

from __future__ import annotations

from deimos_ray import cli
from deimos_ray.algorithms import ALGORITHMS
from deimos_ray.commands import unknown


def main(argv: list[str], prog: str = "deimos-ray train") -> int:
    """Parse ``ALGORITHM [flags]`` and run that algorithm's job (:func:`deimos_ray.cli.main`)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {{{','.join(ALGORITHMS)}}} [flags]\n\n"
              + "\n".join(f"  {name:<7}{(algorithm.description or algorithm.job).splitlines()[0]}"
                          for name, algorithm in ALGORITHMS.items())
              + f"\n\n'{prog} ALGORITHM --help' shows its flags.")
        return 0 if argv else 2
    name = argv[0]
    if name not in ALGORITHMS:
        return unknown("algorithm", name, ALGORITHMS)
    algorithm = ALGORITHMS[name]
    args = cli.job_parser(algorithm, prog=f"{prog} {name}").parse_args(argv[1:])
    return cli.main(algorithm, args)
