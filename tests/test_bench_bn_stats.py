"""``bench/bn_stats.py`` redoes, on a run trained with batch norm's running averages, the
recomputation that the training loop does with ``model.recompute_bn_stats``: its two
columns are the scores of the run trained without it and of the same training with it."""

from __future__ import annotations

import json

import pytest

from tests.helpers import load_job, load_script, smoke_may_collapse

bn_stats = load_script("bench/bn_stats.py")


@smoke_may_collapse
def test_the_recomputed_column_is_what_training_with_the_recomputation_scores(ray_session, tmp_path):
    job = load_job("train_dac")
    parser = job.get_args_parser()
    scores = {}
    for recompute in ("false", "true"):
        out = tmp_path / f"recompute-{recompute}"
        job.main(parser.parse_args(["--recipe", "reference", "--smoke-test", "--num-workers", "0", "--seed", "1",
                                    "--set", f"model.recompute_bn_stats={recompute}", "--out", str(out)]))
        scores[recompute] = json.loads((out / "metrics.json").read_text())["scores"]["dac"]
    redone = bn_stats.compare(tmp_path / "recompute-false")
    for column, trained in (("running averages", scores["false"]), ("recomputed", scores["true"])):
        for key in bn_stats.KEYS:
            assert redone[column][key] == pytest.approx(trained[key], abs=1e-9), (column, key)
    assert scores["false"] != scores["true"]  # the statistics make a difference here
    with pytest.raises(SystemExit, match="running statistics are gone"):
        bn_stats.compare(tmp_path / "recompute-true")
