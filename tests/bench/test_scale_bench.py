"""``bench/scale.py`` gives each stage the GPU samples taken while it ran, by the stage
lines the jobs print; no job is run here."""

from __future__ import annotations

import math

from deimos_ray.progress import stage_line
from tests.helpers import load_script

scale = load_script("bench/scale.py")


def test_each_stage_gets_the_gpu_samples_of_its_window(capsys):
    stage_line("train_dec", "read and features", 4.0)
    stage_line("train_dec", "training", 10.0)
    printed = capsys.readouterr().out.splitlines()
    lines = [(5.0, printed[0]), (15.0, "a line of no stage"), (16.0, printed[1])]
    samples = [(0.5, 100.0), (2.0, 20.0), (4.0, 40.0), (7.0, 90.0), (12.0, 70.0), (20.0, 0.0)]
    shares = scale.gpu_shares(lines, samples)
    assert shares == {"read and features": 30.0, "training": 80.0}  # [1, 5] and [6, 16]
    assert math.isnan(scale.gpu_shares([(1.0, printed[0])], [(9.0, 50.0)])["read and features"])
