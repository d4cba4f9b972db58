"""DAC's batch-norm statistics at assignment, on finished runs: PyTorch's running averages
against the statistics recomputed from the clean images (``model.recompute_bn_stats``).

    python bench/bn_stats.py runs/bench-bn/digits-dac-reference-{0,1,2}
    python bench/bn_stats.py runs/bench-hirise/hirise-dac-reference-*

Takes run directories of DAC trained without the recomputation (the default; e.g.
``bench/quality.py --methods dac-reference --per-run --workdir DIR``). Each run's network
is rebuilt from its checkpoint, a copy gets its batch-norm statistics recomputed from the
run's preprocessed images as the training loop does after its last epoch (the same
batches, through :func:`deimos_ray.train.common.recompute_batch_norm`), and both assign
every image. So the two columns share one training and differ only in the statistics; a
run trained with the recomputation scores what the second column says. Prints accuracy /
NMI / ARI per run and their medians, the share of images whose cluster changed and the
cluster-size entropy before and after. No training runs here; the labels are used only
to score. Runs of one worker (or the driver) only: with several, which rows each worker
held is not on record.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deimos_ray.assign import load_dac  # noqa: E402
from deimos_ray.config import from_dict, load_yaml  # noqa: E402
from deimos_ray.metrics import external_scores, size_entropy  # noqa: E402
from deimos_ray.models.dac import label_features  # noqa: E402
from deimos_ray.pipeline import DACJobConfig, prepare_data  # noqa: E402
from deimos_ray.runtime import init_ray  # noqa: E402
from deimos_ray.train.common import Batches, batched, recompute_batch_norm  # noqa: E402
from deimos_ray.train.dac_loop import selection_size  # noqa: E402

KEYS = ("accuracy", "nmi", "ari")


def clean_images(cfg: DACJobConfig) -> tuple[torch.Tensor, np.ndarray]:
    """The run's preprocessed images in input order (the order training saw) and their labels."""
    data = prepare_data(cfg.data)
    xs, labels = [], []
    for batch in data.good.select_columns(["x", "label"]).iter_batches(batch_size=4096, batch_format="numpy"):
        xs.append(np.asarray(batch["x"], dtype=np.float32))
        labels.append(batch["label"])
    return torch.from_numpy(np.concatenate(xs)), np.concatenate(labels)


def clusters(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Each image's most probable cluster under ``net`` in evaluation mode."""
    with torch.no_grad():
        return torch.cat([label_features(net(part)) for part in batched(x)]).argmax(dim=1).numpy()


def compare(run: Path) -> dict[str, dict[str, float]]:
    """Scores of one run's network with its running statistics and with recomputed ones."""
    cfg = from_dict(DACJobConfig, load_yaml(run / "config.yaml"))
    if cfg.model.recompute_bn_stats:
        raise SystemExit(f"{run} was trained with model.recompute_bn_stats: its running statistics are gone")
    if cfg.scaling.num_workers > 1:
        raise SystemExit(f"{run} trained on {cfg.scaling.num_workers} workers; only one-worker runs can be redone")
    torch.set_num_threads(cfg.scaling.torch_threads or max(1, int(cfg.scaling.cpus_per_worker)))
    epochs = json.loads((run / "metrics.json").read_text())["training"]["epochs"]
    x, labels = clean_images(cfg)
    n = len(x)
    running = load_dac(run / "checkpoint")
    recomputed = copy.deepcopy(running)
    clean = Batches(n, n, selection_size(cfg.model, n), cfg.seed)  # the loop's batches, one worker
    recompute_batch_norm(recomputed, (x[idx] for idx in clean.epoch(epochs)))
    before, after = clusters(running, x), clusters(recomputed, x)
    print(f"{run.name}: {float(np.mean(before != after)):.3f} of the images change cluster; cluster-size "
          f"entropy {size_entropy(before):.3f} -> {size_entropy(after):.3f} (equal sizes: "
          f"{np.log(cfg.model.n_clusters):.3f})",
          flush=True)
    return {"running averages": external_scores(labels, before), "recomputed": external_scores(labels, after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished DAC run directories")
    args = parser.parse_args()
    init_ray(quiet=True)
    scores = {run.name: compare(run) for run in args.runs}
    columns = ("running averages", "recomputed")

    def cell(s: dict[str, float]) -> str:
        return " / ".join(f"{s[k]:.3f}" for k in KEYS)

    print("\n| run | " + " | ".join(columns) + " |\n|---|---|---|")
    for name, row in scores.items():
        print(f"| {name} | " + " | ".join(cell(row[c]) for c in columns) + " |")
    medians = {c: {k: statistics.median(row[c][k] for row in scores.values()) for k in KEYS} for c in columns}
    print("| median | " + " | ".join(cell(medians[c]) for c in columns) + " |")
    print("\n(accuracy / NMI / ARI)")


if __name__ == "__main__":
    main()
