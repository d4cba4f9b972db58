"""``bench/features.py``'s plain loop computes the same features as the extractor the Ray
Data stage uses, timing its phases; no Ray is started here."""

from __future__ import annotations

import numpy as np
import pytest

from deimos_ray.data.features import FeatureExtractor
from deimos_ray.data.preprocess import ImageSpec, decode_file
from tests.helpers import ROOT, load_script

features_bench = load_script("bench/features.py")
FILES = sorted((ROOT / "tests" / "fixtures" / "hirise" / "map-proj-v3").glob("*.jpg"))[:5]


def test_the_plain_loop_times_every_phase_of_the_extractors_own_computation():
    extractor = FeatureExtractor("efficientnet_lite0", None, 32)
    seconds = features_bench.plain_loop(FILES, extractor, 32, batch_size=2)
    assert set(seconds) == {"decode", "copy", "forward"} and all(v > 0 for v in seconds.values())

    # Its phases, step by step, give what the extractor's one call gives.
    images = np.stack([decode_file(str(f), ImageSpec((32, 32), 1)) for f in FILES])
    by_phase = np.concatenate([extractor.forward(extractor.to_device(images[i:i + 2])) for i in range(0, 5, 2)])
    np.testing.assert_allclose(by_phase, extractor.features(images), rtol=1e-4, atol=1e-4)  # batch sizes round differently
    assert features_bench.forward_ceiling(extractor, 32, batch_size=2, seconds=0.2) > 0


def test_the_plain_loop_refuses_to_time_a_run_that_lost_images(monkeypatch):
    extractor = FeatureExtractor("efficientnet_lite0", None, 32)
    monkeypatch.setattr(extractor, "forward", lambda images: np.zeros((len(images) - 1, 4), np.float32))
    with pytest.raises(AssertionError, match="of 5 images"):
        features_bench.plain_loop(FILES, extractor, 32, batch_size=2)
