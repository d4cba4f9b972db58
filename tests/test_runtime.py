"""deimos_ray.runtime: the Ray Data settings batch jobs run with."""

from __future__ import annotations

import logging

from deimos_ray.runtime import configure_data_context


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_without_progress_bars_only_the_advice_to_enable_them_is_dropped():
    configure_data_context(quiet=True)  # progress bars off on purpose
    log = logging.getLogger("ray.data._internal.progress")  # where Ray Data gives that advice
    collect = _Collect()
    log.addHandler(collect)
    try:
        log.warning("Progress bars disabled. To enable, set `...enable_progress_bars = True`.")
        log.warning("Progress bars for operators disabled.")
        log.warning("an operator failed")
    finally:
        log.removeHandler(collect)
    assert collect.messages == ["Progress bars for operators disabled.", "an operator failed"]
