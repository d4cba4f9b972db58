"""How the ways of making one clustering of several trainings compare, on finished runs
of DAC or DESOM.

    python bench/restart_rules.py runs/bench-digits --name digits-dac-reference \\
        --groups 0,1000,2000,3000 1,1001,2001,3001 2,1002,2002,3002
    python bench/restart_rules.py runs/bench-usps --name usps-dac-reference --trim 2 \\
        --groups 0,1000,2000,3000,1,1001,2001,3001,2,1002,2002,3002
    python bench/restart_rules.py runs/bench-desom --name usps-desom-8x8 \\
        --groups 0,1000,2000,3000 1,1001,2001,3001 2,1002,2002,3002

Reads single trainings that ``bench/quality.py --per-run --workdir DIR`` finished (run
directories ``DIR/NAME-SEED``) and treats each group of seeds as the restarts of one
run: restart r of seed s trains from seed s + 1000 r, so the group 0,1000,2000,3000 is
what ``--restarts 4`` with seed 0 trains. Per group it prints accuracy / NMI / ARI of

- the group's first training (one training, no restarts);
- the training with the lowest final loss (``model.restart_combine=lowest_loss``;
  DAC's mean pair loss, DESOM's reconstruction + gamma x SOM);
- the consensus of all of them (``consensus``, the default: :mod:`deimos_ray.consensus`,
  as the job combines its restarts' assignments: DAC's averaged probabilities, DESOM's
  vote of the groupings of the nodes);
- the training with the best accuracy, which only the labels can pick (a ceiling for
  any rule that keeps one training);
- with ``--trim RATIO`` (repeatable), the consensus of only the trainings whose final
  loss is at most RATIO times the group's lowest (failed trainings left out; one left
  is that training itself);

and the median of each over the groups. No training runs here; the labels are used
only to score.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deimos_ray.assign import read_aligned, read_dac_probabilities  # noqa: E402
from deimos_ray.consensus import combine_labelings, combine_probabilities  # noqa: E402
from deimos_ray.metrics import external_scores  # noqa: E402
from deimos_ray.train.dac_loop import final_pair_loss  # noqa: E402
from deimos_ray.train.desom_loop import final_loss  # noqa: E402

RULES = ("first training", "lowest final loss", "consensus", "best accuracy (labels pick)")


def read_group(runs: list[Path], seed: int) -> tuple[np.ndarray, list[np.ndarray], list[float],
                                                        Callable[[list[int]], np.ndarray]]:
    """The labels, every training's clusters and final loss, and the consensus of any
    subset of the trainings, all in the row order the job combines them in (DAC: the
    first restart's; DESOM: the lowest-loss restart's)."""
    models = [yaml.safe_load((run / "config.yaml").read_text())["model"] for run in runs]
    summaries = [json.loads((run / "metrics.json").read_text())["training"] for run in runs]
    sources = [run / "assignments" for run in runs]
    if "map_size" in models[0]:  # DESOM
        losses = [final_loss(summary) for summary in summaries]
        table, labelings = read_aligned(sources, "cluster", base=int(np.argmin(losses)))
        k = models[0]["n_clusters"]

        def consensus(members: list[int]) -> np.ndarray:
            return combine_labelings([labelings[i] for i in members], k, seed)[0]
    else:
        losses = [final_pair_loss(summary) for summary in summaries]
        table, probabilities = read_dac_probabilities(sources)
        labelings = [p.argmax(axis=1) for p in probabilities]

        def consensus(members: list[int]) -> np.ndarray:
            return combine_probabilities([probabilities[i] for i in members], seed)[0].argmax(axis=1)
    return table.column("label").to_numpy(), labelings, losses, consensus


def score_group(runs: list[Path], seed: int, trims: list[float]) -> dict[str, dict[str, float]]:
    """Each rule's external scores for one group of trainings of the same rows."""
    labels, labelings, losses, consensus = read_group(runs, seed)
    per_run = [external_scores(labels, clusters) for clusters in labelings]
    scores = {
        RULES[0]: per_run[0],
        RULES[1]: per_run[int(np.argmin(losses))],
        RULES[2]: external_scores(labels, consensus(list(range(len(runs))))),
        RULES[3]: max(per_run, key=lambda s: s["accuracy"]),
    }
    for ratio in trims:
        kept = [i for i, loss in enumerate(losses) if loss <= ratio * min(losses)]
        trimmed = labelings[kept[0]] if len(kept) == 1 else consensus(kept)
        scores[trim_rule(ratio)] = external_scores(labels, trimmed)
    return scores


def trim_rule(ratio: float) -> str:
    return f"consensus, final loss within {ratio:g}x the lowest"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", type=Path, help="bench/quality.py's --workdir with the finished runs")
    p.add_argument("--name", required=True, help="run directories are WORKDIR/NAME-SEED, e.g. digits-dac-reference")
    p.add_argument("--groups", nargs="+", required=True, metavar="S,S,...",
                   help="seeds of the trainings combined, one group per simulated run")
    p.add_argument("--trim", nargs="+", type=float, default=[], metavar="RATIO",
                   help="also the consensus of the trainings whose final loss is at most "
                        "RATIO times the group's lowest")
    args = p.parse_args()
    groups = [[int(s) for s in group.split(",")] for group in args.groups]
    if any(len(group) < 2 for group in groups):
        p.error("every group needs at least two seeds")

    results = [score_group([args.workdir / f"{args.name}-{s}" for s in group], group[0], args.trim)
               for group in groups]
    print(f"\n{args.name}: {len(groups)} group(s) of {', '.join(str(len(g)) for g in groups)} trainings\n")
    print("| rule | " + " | ".join(f"seeds {','.join(map(str, g))}" for g in groups) + " | median |")
    print("|---|" + "---|" * (len(groups) + 1))
    for rule in [*RULES, *map(trim_rule, args.trim)]:
        cells = [f"{r[rule]['accuracy']:.3f} / {r[rule]['nmi']:.3f} / {r[rule]['ari']:.3f}" for r in results]
        median = [statistics.median(r[rule][key] for r in results) for key in ("accuracy", "nmi", "ari")]
        print(f"| {rule} | " + " | ".join(cells) + " | " + " / ".join(f"{m:.3f}" for m in median) + " |")
    print("\n(accuracy / NMI / ARI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
