"""``bench/quality.py`` builds each run's config from the dataset's, the method's and the
command line's settings, ``--set`` last, and refuses a bad ``--set`` before Ray starts;
its tables show held-out scores when training saw labels. No run is trained here."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tests.helpers import ROOT, load_script

quality = load_script("bench/quality.py")


def bench_args(*sets: str) -> argparse.Namespace:
    """The options ``build_config`` reads, at the benchmark's defaults."""
    from deimos_ray.config_io import parse_override

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


def test_set_leaves_alone_what_a_method_is_named_for(capsys):
    args = bench_args("model.epochs=100", "model.variant=idec")
    assert quality.build_config("imbalanced", "dec", 0, args).model.epochs == 100
    start = quality.build_config("imbalanced", "dec-kmeans-start", 0, args)
    assert start.model.epochs == 0 and start.model.variant == "dec"  # k-means on DEC's embedding
    assert "dec-kmeans-start keeps its own model.epochs=0" in capsys.readouterr().out


def test_with_a_backbone_the_images_are_decoded_at_its_size_and_its_features_cached(tmp_path):
    args = bench_args()
    args.feature_cache = tmp_path / "feature-cache"
    cfg = quality.build_config("hirise", "dec", 0, args, backbone="efficientnet_lite0")
    assert cfg.features.backbone == "efficientnet_lite0" and cfg.features.cache == str(args.feature_cache)
    assert cfg.data.image_size is None and cfg.data.originals_only is True
    assert quality.build_config("hirise", "dec", 0, args).features.backbone == "none"


def test_without_set_the_method_settings_stand():
    cfg = quality.build_config("hirise", "dac-reference", 0, bench_args())
    assert cfg.model.official_lower == 0.7 and cfg.data.image_size == 32


@pytest.mark.parametrize("setting", ["model.nope=1", "model.official_lower=0.95"])
def test_a_bad_set_raises(setting):
    with pytest.raises(ValueError):
        quality.build_config("digits", "dac-reference", 0, bench_args(setting))


@pytest.mark.parametrize("argv, message", [
    (["--methods", "dac", "desom-8x8", "--set", "model.official_lower=0.5"], "no setting 'model.official_lower'"),
    (["--methods", "dac-reference", "--set", "model.official_lower=0.95"], "must be below"),
    (["--set", "data.image_size"], "must look like key.path=value"),
])
def test_the_script_refuses_a_bad_set_before_ray_starts(argv, message):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--datasets", "digits", *argv],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2, done.stderr  # argparse's refusal, before any run
    assert message in done.stderr


def test_tables_use_held_out_scores_when_training_saw_labels():
    every_row = {"accuracy": 0.9, "nmi": 0.8, "ari": 0.7, "purity": 0.95, "silhouette": 0.1}
    with_labels = {**every_row, "heldout_accuracy": 0.6, "heldout_nmi": 0.5, "heldout_ari": 0.4,
                   "heldout_purity": 0.65}
    run = {"model": "dac", "scores": {"dac": with_labels, "kmeans": {**every_row, "heldout_accuracy": 0.3,
                                                                     "heldout_nmi": 0.2, "heldout_ari": 0.1,
                                                                     "heldout_purity": 0.35}}}
    model = quality.scored(run, "model")
    assert [model[k] for k in quality.KEYS] == [0.6, 0.5, 0.4, 0.65]
    assert model["silhouette"] == 0.1
    assert [quality.scored(run, "kmeans")[k] for k in quality.KEYS] == [0.3, 0.2, 0.1, 0.35]
    blind = {"model": "dac", "scores": {"dac": every_row, "kmeans": every_row}}
    assert [quality.scored(blind, "model")[k] for k in quality.KEYS] == [0.9, 0.8, 0.7, 0.95]
