"""deimos_ray.DeepClusterer, the scikit-learn face: scikit-learn's own estimator checks,
and fit/predict on the digits against k-means on the same pixels.

Every fit is a whole job and every predict a Ray Data assignment (4-5 s each), and the
full list of checks makes about 130 of them (10 minutes on 2 cores). ``make test`` runs
the checks that cost no fit and the ones below; ``make estimator-checks`` runs them all
(all pass but ``check_array_api_input``, which scikit-learn skips without
``SCIPY_ARRAY_API``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score
from sklearn.utils.estimator_checks import parametrize_with_checks

import deimos_ray
from deimos_ray.estimator import DeepClusterer

# A small DEC so that each of the checks' few dozen fits takes seconds: every fit is a
# whole job (Ray Data, Ray Train in this process, Ray Data assignment, scores).
FAST = {"model.pretrain_epochs": 30, "model.hidden_dims": [32, 32], "model.latent_dim": 4,
        "model.epochs": 20, "model.update_interval": 10, "model.kmeans_n_init": 3,
        "baseline_n_init": 1, "baseline_ward": False, "checkpoint_interval_s": 0}

# Checks that do not apply, with why. Every other check in scikit-learn's list runs.
NOT_APPLICABLE = {
    # Array-API inputs (CuPy, torch tensors through array_api_compat) are not taken: X
    # becomes a NumPy array written for Ray Data.
    "check_array_api_input": "X is converted to NumPy for Ray Data",
}


# The checks that fit, run in ``make test`` (not their read-only-memmap repeats): the
# clusterer's contract, input validation and fitted state.
FITTING_CHECKS_IN_MAKE_TEST = {
    "check_clustering", "check_fit2d_1sample", "check_n_features_in_after_fitting",
    "check_estimators_nan_inf", "check_fit_check_is_fitted", "check_estimators_fit_returns_self",
    "check_fit2d_predict1d",
}
# The checks that never fit (parameters, tags, cloning, unfitted errors, sparse input).
NO_FIT_CHECKS = {
    "check_estimator_cloneable", "check_estimator_repr", "check_no_attributes_set_in_init",
    "check_parameters_default_constructible", "check_get_params_invariance", "check_set_params",
    "check_do_not_raise_errors_in_init_or_set_params", "check_mixin_order", "check_valid_tag_types",
    "check_estimator_tags_renamed", "check_estimators_unfitted", "check_transformers_unfitted",
    "check_estimator_sparse_array", "check_estimator_sparse_matrix", "check_estimator_sparse_tag",
    "check_complex_data", "check_fit1d", "check_estimators_empty_data_messages",
    "check_estimators_partial_fit_n_features", "check_clusterer_compute_labels_predict",
    "check_array_api_input",
}
ALL_CHECKS = os.environ.get("DEIMOS_RAY_ALL_ESTIMATOR_CHECKS") == "1"


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_session):
    return ray_session


def _run_folders() -> set[Path]:
    """The temporary run folders of fits without ``out_dir``."""
    return set(Path(tempfile.gettempdir()).glob("deimos_ray_fit_*"))


@pytest.fixture(scope="module", autouse=True)
def _remove_new_run_folders():
    """A fit without ``out_dir`` keeps its temporary run folder (``predict`` needs it);
    the ones this module's fits made are removed after them."""
    before = _run_folders()
    yield
    for folder in _run_folders() - before:
        shutil.rmtree(folder, ignore_errors=True)


@parametrize_with_checks([DeepClusterer(n_clusters=3, settings=FAST)],
                         expected_failed_checks=lambda est: NOT_APPLICABLE)
def test_scikit_learn_estimator_checks(estimator, check):
    name = getattr(check, "func", check).__name__
    repeat = getattr(check, "keywords", {}).get("readonly_memmap", False)
    if not (ALL_CHECKS or name in NO_FIT_CHECKS or (name in FITTING_CHECKS_IN_MAKE_TEST and not repeat)):
        pytest.skip("fits many times: run by make estimator-checks")
    check(estimator)


def test_the_package_exports_the_estimator():
    assert deimos_ray.DeepClusterer is DeepClusterer


def test_fit_predict_on_the_digits_beats_kmeans_on_the_pixels(tmp_path):
    images, labels = load_digits(return_X_y=True)
    images = images.reshape(-1, 8, 8)
    est = DeepClusterer(n_clusters=10, random_state=0, out_dir=str(tmp_path / "run"),
                        settings={"model.pretrain_epochs": 200, "model.hidden_dims": [128, 128, 256],
                                  "baseline_ward": False})
    clusters = est.fit_predict(images)
    kmeans = KMeans(10, n_init=10, random_state=0).fit_predict(images.reshape(len(images), -1))
    assert normalized_mutual_info_score(labels, clusters) > normalized_mutual_info_score(labels, kmeans)
    # The run behind it is an ordinary run folder, its scores beside k-means ...
    assert est.metrics_["accounting"] == {"inputs": 1797, "assigned": 1797, "rejected": 0}
    assert set(est.metrics_["scores"]) == {"dec", "kmeans"}
    # ... and predicting new rows reuses it: the first 100 images again get their clusters.
    np.testing.assert_array_equal(est.predict(images[:100]), clusters[:100])
    assert est.transform(images[:5]).shape == (5, 10)


def test_bad_input_is_refused_before_ray_starts():
    folders = _run_folders()
    est = DeepClusterer(n_clusters=5)
    with pytest.raises(ValueError, match="n_samples=3 should be >= n_clusters=5"):
        est.fit(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="C 1 or 3"):
        est.fit(np.zeros((10, 4, 4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        est.fit(np.full((10, 4), np.nan))
    assert _run_folders() == folders  # no run folder made


def test_fewer_clusters_than_asked_is_a_warning():
    # Twelve identical rows can only make one cluster.
    est = DeepClusterer(n_clusters=3, settings=FAST)
    with pytest.warns(UserWarning, match="returned 1 distinct clusters, fewer than n_clusters=3"):
        est.fit(np.ones((12, 4)))
    assert set(est.labels_) == {est.labels_[0]}


def test_a_data_spec_is_fitted_like_a_job(tmp_path):
    est = DeepClusterer(n_clusters=3, settings={**FAST, "data.limit": 60}).fit("digits")
    assert len(est.labels_) == len(est.embedding_) == 60
    assert not hasattr(est, "n_features_in_")
    assert (Path(est.run_dir_) / "metrics.json").is_file()
