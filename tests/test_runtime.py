"""deimos_ray.runtime: the Ray Data settings batch jobs run with."""

from __future__ import annotations

import logging
import time
from logging.handlers import BufferingHandler

import numpy as np

from deimos_ray.runtime import configure_data_context


def test_without_progress_bars_only_the_advice_to_enable_them_is_dropped():
    configure_data_context(quiet=True)  # progress bars off on purpose
    log = logging.getLogger("ray.data._internal.progress")  # where Ray Data gives that advice
    collect = BufferingHandler(capacity=100)
    log.addHandler(collect)
    try:
        log.warning("Progress bars disabled. To enable, set `...enable_progress_bars = True`.")
        log.warning("Progress bars for operators disabled.")
        log.warning("an operator failed")
    finally:
        log.removeHandler(collect)
    assert [r.getMessage() for r in collect.buffer] == ["Progress bars for operators disabled.",
                                                        "an operator failed"]


def _slow_first_blocks(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    time.sleep(0.5 if batch["i"][0] < 4 else 0.0)  # the first block finishes last
    return batch


def test_rows_reach_the_consumer_in_input_order(ray_session):
    import ray

    configure_data_context(quiet=True)
    ds = ray.data.from_items([{"i": i} for i in range(32)], override_num_blocks=8)
    ds = ds.map_batches(_slow_first_blocks, batch_format="numpy", batch_size=None)
    # Without preserve_order the seven quick blocks come first, so a seed's batches
    # and chunks depended on which decode task finished first.
    assert [int(i) for b in ds.iter_batches(batch_format="numpy") for i in b["i"]] == list(range(32))
    assert ds.materialize().take_batch(32)["i"].tolist() == list(range(32))
