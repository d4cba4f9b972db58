"""What the console shows of a training: its progress through the board actor, one line
at its end, and the loop's own lines only with -v."""

from __future__ import annotations

import pytest

from deimos_ray import progress


@pytest.mark.parametrize("verbose", [False, True])
def test_a_training_ends_with_one_line_and_its_log_lines_only_when_verbose(ray_session, capsys, monkeypatch,
                                                                            verbose):
    monkeypatch.setattr(progress, "_enabled", True)
    monkeypatch.setattr(progress, "_verbose", verbose)
    with progress.TrainingDisplay("train_x", "training") as display:
        progress.attach(display.board)  # as the loop's process does
        try:
            progress.note("[x] lambda 0.1 upper 0.95")
            progress.advance(3, 10, "epoch", loss=0.51234)
        finally:
            progress.attach(None)
    lines = capsys.readouterr().out.splitlines()
    assert ("[x] lambda 0.1 upper 0.95" in lines) == verbose
    assert lines[-1].startswith("[train_x] training: 3 epochs (at most 10), loss 0.5123 (")  # stopped early


def test_outside_a_command_nothing_is_started_and_lines_are_printed(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_enabled", False)
    with progress.TrainingDisplay("train_x") as display:
        assert display.board is None
        progress.note("[x] a line")
        progress.advance(1, 2, "epoch")
    assert capsys.readouterr().out == "[x] a line\n"
