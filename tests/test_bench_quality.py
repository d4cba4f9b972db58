"""``bench/quality.py`` builds each run's config from the dataset's, the method's and the
command line's settings, ``--set`` last, and refuses a bad ``--set`` before Ray starts.
No run is trained here."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tests.helpers import ROOT, load_script

quality = load_script("bench/quality.py")


def bench_args(*sets: str) -> argparse.Namespace:
    """The options ``build_config`` reads, at the benchmark's defaults."""
    from deimos_ray.config import parse_override

    return argparse.Namespace(num_workers=0, use_gpu=False, torch_threads=None, pretrain_epochs=100,
                              desom_iterations=2000, overrides=dict(parse_override(s) for s in sets))


def test_set_is_applied_over_the_method_and_dataset_settings():
    cfg = quality.build_config("hirise", "dac-reference", 3,
                               bench_args("model.official_lower=0.5", "data.image_size=64"))
    assert cfg.model.official_lower == 0.5  # the recipe says 0.7
    assert cfg.model.official_upper == 0.9  # the recipe's, untouched
    assert cfg.data.image_size == 64  # the dataset says 32
    assert cfg.data.originals_only is True
    assert cfg.model.n_clusters == 8 and cfg.seed == 3


def test_without_set_the_method_settings_stand():
    cfg = quality.build_config("hirise", "dac-reference", 0, bench_args())
    assert cfg.model.official_lower == 0.7 and cfg.data.image_size == 32


@pytest.mark.parametrize("setting", ["model.nope=1", "model.official_lower=0.95"])
def test_a_bad_set_raises(setting):
    with pytest.raises(ValueError):
        quality.build_config("digits", "dac-reference", 0, bench_args(setting))


@pytest.mark.parametrize("argv, message", [
    (["--methods", "dac", "desom-8x8", "--set", "model.official_lower=0.5"], "no field 'official_lower'"),
    (["--methods", "dac-reference", "--set", "model.official_lower=0.95"], "must be below"),
    (["--set", "data.image_size"], "must look like key.path=value"),
])
def test_the_script_refuses_a_bad_set_before_ray_starts(argv, message):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--datasets", "digits", *argv],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2, done.stderr  # argparse's refusal, before any run
    assert message in done.stderr
