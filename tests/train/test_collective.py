"""The collectives the loops use: identities in one process, global in a 2-worker run."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import ray
import torch

from deimos_ray.config import ScalingConfig
from deimos_ray.train import collective as C
from deimos_ray.train.driver import fit

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_one_process_collectives_are_identities():
    t = torch.tensor([1.0, 2.0])
    assert not C.is_distributed() and C.world_size() == 1 and C.rank() == 0
    assert torch.equal(C.all_reduce_sum(t.clone()), t)
    assert torch.equal(C.broadcast_(t.clone()), t)
    assert torch.equal(C.all_gather(t), t)
    assert C.all_gather_object({"a": 1}) == [{"a": 1}]
    module = torch.nn.Linear(2, 2)
    assert C.wrap_ddp(module, torch.device("cpu")) is module and C.unwrap(module) is module


def collective_probe(config):
    rank = C.rank()
    mine = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
    total = C.all_reduce_sum(mine.clone())
    from_zero = C.broadcast_(torch.full((2,), float(rank)))
    gathered = C.all_gather(mine[None, :])
    objects = C.all_gather_object(f"rank{rank}")
    wrapped = C.wrap_ddp(torch.nn.Linear(2, 1), torch.device("cpu"))
    return {"world": C.world_size(), "total": total.tolist(), "from_zero": from_zero.tolist(),
            "gathered": gathered.tolist(), "objects": objects,
            "ddp": isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)}


@pytest.mark.slow
def test_two_workers_reduce_broadcast_and_gather(ray_session, tmp_path):
    result = fit(collective_probe, {}, ray_session.data.range(4), ScalingConfig(num_workers=2), tmp_path, name="c")
    out = result.return_value  # rank 0's
    assert out["world"] == 2 and out["ddp"]
    assert out["total"] == [3.0, 30.0]
    assert out["from_zero"] == [0.0, 0.0]
    np.testing.assert_array_equal(out["gathered"], [[1.0, 10.0], [2.0, 20.0]])  # in rank order
    assert out["objects"] == ["rank0", "rank1"]
