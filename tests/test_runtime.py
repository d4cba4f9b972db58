"""deimos_ray.runtime: the Ray Data settings batch jobs run with."""

from __future__ import annotations

import logging
from logging.handlers import BufferingHandler

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
