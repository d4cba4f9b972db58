"""Ray Train's overhead on one worker: each algorithm's training step loop in a Ray Train
worker against the same loop in plain PyTorch, same model, data and threads, one run.

    python bench/train_overhead.py                 # DAC, DEC, DESOM on the digits, 3 repeats
    python bench/train_overhead.py --repeats 5 --algorithms dac

For each algorithm the same function (:func:`step_loop`) builds the model the job
builds, with the job's optimiser, and times ``--steps`` training steps after a warm-up,
on the preprocessed digits (1,797 8x8 images):

- ``plain``: in this process, PyTorch limited to one thread, the rows as one tensor;
- ``ray train``: inside a Ray Train run of one worker with one CPU and one PyTorch
  thread (:func:`deimos_ray.train.driver.fit`, as the jobs train), reading its shard
  from Ray Data and wrapping the model with DDP as the training loops do.

The two alternate, ``--repeats`` times each. Printed per algorithm: the median images
per second of each (the runs in brackets), their ratio, and the Ray run's whole
``fit()`` time beside the time of its step loop (the difference is the worker group's
start, the shard's read and the teardown, paid once per training). The last line is
``ratio R``: the lowest of the algorithms' ratios (Ray Train's throughput over plain).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deimos_ray.config import DataConfig, ScalingConfig  # noqa: E402
from deimos_ray.config_io import from_dict, to_dict  # noqa: E402
from deimos_ray.data.prepare import collect_features, prepare_data  # noqa: E402
from deimos_ray.losses.dec import soft_assignment, target_distribution  # noqa: E402
from deimos_ray.models.dac import DACConfig, DACNet  # noqa: E402
from deimos_ray.models.dec import DEC, DECConfig, build_autoencoder  # noqa: E402
from deimos_ray.models.desom import DESOM, DESOMConfig  # noqa: E402
from deimos_ray.runtime import init_ray  # noqa: E402
from deimos_ray.train import collective as C  # noqa: E402
from deimos_ray.train import dac_loop  # noqa: E402
from deimos_ray.train.common import load_shard  # noqa: E402
from deimos_ray.train.driver import fit  # noqa: E402

# The jobs' default models, at the sizes a digits run uses.
MODELS = {"dac": DACConfig(), "dec": DECConfig(variant="idec"), "desom": DESOMConfig(map_size=(8, 8))}
STEPS = {"dac": 60, "dec": 150, "desom": 150}
WARMUP = 5


def build(name: str, model_cfg: dict[str, Any], shape: tuple[int, ...]) -> tuple[Any, torch.nn.Module, Any]:
    """The config, the job's model and its optimiser for ``name``, seeded."""
    torch.manual_seed(0)
    if name == "dac":
        cfg = from_dict(DACConfig, model_cfg)
        net = DACNet(cfg, shape)
        return cfg, net, torch.optim.RMSprop(net.parameters(), lr=cfg.lr, alpha=cfg.rmsprop_alpha)
    if name == "dec":
        cfg = from_dict(DECConfig, model_cfg)
        model = DEC(cfg, build_autoencoder(cfg, shape))
        return cfg, model, torch.optim.Adam(model.parameters(), lr=1e-3)  # IDEC's clustering optimiser
    cfg = from_dict(DESOMConfig, model_cfg)
    model = DESOM(cfg, shape)
    return cfg, model, torch.optim.Adam(model.parameters(), lr=cfg.lr)


def step_loop(name: str, model_cfg: dict[str, Any], x: torch.Tensor, steps: int) -> float:
    """Seconds of ``steps`` training steps of ``name``'s model on batches of ``x``,
    after ``WARMUP`` untimed ones; the model is DDP-wrapped when this runs in a
    distributed Ray Train worker, as in the training loops."""
    shape = tuple(x.shape[1:])
    cfg, module, opt = build(name, model_cfg, shape)
    model = C.wrap_ddp(module, torch.device("cpu"))
    batch = cfg.batch_size
    g = torch.Generator().manual_seed(0)
    known = torch.full((batch,), -1)
    if name == "dec":  # a fixed target, as between two of DEC's target updates
        with torch.no_grad():
            z = module.embed(x[:batch])
            module.centres.data.copy_(z[: cfg.n_clusters])
            q = soft_assignment(z, module.centres)
            target = target_distribution(q, q.sum(0))

    def one_step(i: int) -> None:
        rows = torch.arange(i * batch, (i + 1) * batch) % len(x)
        xb = x[rows]
        if name == "dac":
            loss, _ = dac_loop.step_loss(model, xb, known, cfg, 0.9, 0.5, g)
        elif name == "dec":
            _, q, x_hat = model(xb)
            loss, _ = module.loss_from_outputs(xb, target, q, x_hat)
        else:
            _, x_hat, d = model(xb)
            loss, _ = module.loss(xb, x_hat, d, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(WARMUP):
        one_step(i)
    start = time.perf_counter()
    for i in range(steps):
        one_step(i)
    return time.perf_counter() - start


def ray_worker(config: dict[str, Any]) -> dict[str, float]:
    """Ray Train entry point: the step loop on this worker's shard."""
    x = load_shard(ray.train.get_dataset_shard("train"), tuple(config["shape"]))
    return {"loop_s": step_loop(config["name"], config["model"], x, config["steps"])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None, help="Ray Train storage (default: a temporary folder)")
    args = p.parse_args()

    init_ray(num_cpus=2, quiet=True)
    data = prepare_data(DataConfig(spec="digits"))
    shape = tuple(data.input_shape)
    _, flat = collect_features(data.good)
    x = torch.from_numpy(np.ascontiguousarray(flat.reshape(-1, *shape)))
    rows = data.good.select_columns(["x"]).materialize()
    storage = Path(args.workdir or tempfile.mkdtemp(prefix="bench-overhead-"))
    scaling = ScalingConfig(num_workers=1, cpus_per_worker=1, torch_threads=1)

    results = []
    for name in args.algorithms:
        steps, batch = STEPS[name], MODELS[name].batch_size
        model_cfg = to_dict(MODELS[name])
        plain, ray_rate, fit_s, loop_s = [], [], [], []
        for r in range(args.repeats):
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                plain.append(steps * batch / step_loop(name, model_cfg, x, steps))
            finally:
                torch.set_num_threads(threads)
            t = time.perf_counter()
            result = fit(ray_worker, {"name": name, "model": model_cfg, "shape": list(shape), "steps": steps},
                         rows, scaling, storage, name=f"{name}-{r}")
            fit_s.append(time.perf_counter() - t)
            loop_s.append(result.return_value["loop_s"])
            ray_rate.append(steps * batch / loop_s[-1])
            print(f"{name} repeat {r + 1}: plain {plain[-1]:.0f} img/s, ray train {ray_rate[-1]:.0f} img/s, "
                  f"fit() {fit_s[-1]:.1f} s", flush=True)
        results.append((name, plain, ray_rate, fit_s, loop_s))

    print(f"\none worker, one CPU, one PyTorch thread; digits {tuple(x.shape)}; median of {args.repeats}\n")
    print("| algorithm | steps x batch | plain PyTorch, img/s | Ray Train worker, img/s | ratio "
          "| Ray fit(), s | of which the step loop, s |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for name, plain, ray_rate, fit_s, loop_s in results:
        ratio = statistics.median(ray_rate) / statistics.median(plain)
        ratios.append(ratio)
        runs = lambda values: ", ".join(f"{v:.0f}" for v in values)  # noqa: E731
        print(f"| {name} | {STEPS[name]} x {MODELS[name].batch_size} | {statistics.median(plain):.0f} "
              f"({runs(plain)}) | {statistics.median(ray_rate):.0f} ({runs(ray_rate)}) | {ratio:.2f} "
              f"| {statistics.median(fit_s):.1f} | {statistics.median(loop_s):.1f} |")
    print(f"\nratio {min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
