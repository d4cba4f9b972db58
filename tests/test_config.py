"""Config loading, overriding and validation; the shipped YAML matches the dataclasses."""

from pathlib import Path

import pytest

from deimos_ray.algorithms.dac import DACJobConfig
from deimos_ray.algorithms.dec import DECJobConfig
from deimos_ray.algorithms.desom import DESOMJobConfig
from deimos_ray.config import DataConfig
from deimos_ray.config_io import (
    from_dict,
    load_yaml,
    override,
    override_all,
    parse_override,
    save_yaml,
    stored_settings,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("job,cls", [("train_dec", DECJobConfig), ("train_dac", DACJobConfig),
                                     ("train_desom", DESOMJobConfig)])
def test_shipped_yaml_is_the_default_config(job, cls):
    written = load_yaml(ROOT / "configs" / f"{job}.yaml")
    assert from_dict(cls, written) == cls()
    # As written too: from_dict fills a missing key with its default, which would hide a
    # setting the shipped file forgot to list.
    assert written == to_dict(cls())


def test_a_key_written_twice_is_refused_with_its_place(tmp_path):
    # PyYAML alone keeps the last of two equal keys; the first value would be lost.
    path = tmp_path / "twice.yaml"
    path.write_text("data:\n  tile: 32\n  stride: null\n  tile: null\n")
    with pytest.raises(ValueError, match=r"twice\.yaml, line 4 is not valid YAML: key 'tile' is written twice"):
        load_yaml(path)


def test_unknown_keys_are_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown key.*n_cluster"):
        from_dict(DECJobConfig, {"model": {"n_cluster": 3}})


def test_yaml_round_trip(tmp_path):
    cfg = override(DECJobConfig(), "model.hidden_dims", [32, 16])
    save_yaml(cfg, tmp_path / "c.yaml")
    assert from_dict(DECJobConfig, load_yaml(tmp_path / "c.yaml")) == cfg
    assert to_dict(cfg)["model"]["hidden_dims"] == [32, 16]


def test_override_validates_eagerly():
    assert override(DECJobConfig(), "model.n_clusters", 4).model.n_clusters == 4
    with pytest.raises(ValueError, match="on_error"):
        override(DECJobConfig(), "data.on_error", "ignore")
    with pytest.raises(ValueError, match="no field"):
        override(DECJobConfig(), "model.nope", 1)
    with pytest.raises(ValueError, match="channels"):
        DataConfig(channels=2)


def test_override_all_validates_once_whatever_the_order():
    # DESOM's restart consensus needs n_clusters: one setting at a time, restarts=2 first
    # would be refused before n_clusters arrives.
    settings = {"restarts.count": 2, "model.n_clusters": 4, "model.map_size": [3, 3]}
    cfg = override_all(DESOMJobConfig(), settings)
    assert (cfg.restarts.count, cfg.model.n_clusters, cfg.model.map_size) == (2, 4, (3, 3))
    with pytest.raises(ValueError, match="needs --k"):
        override_all(DESOMJobConfig(), {"restarts.count": 2})
    with pytest.raises(ValueError, match="needs --num-workers >= 1"):
        override_all(DACJobConfig(), {"restarts.count": 2, "restarts.concurrent": 2, "scaling.num_workers": 0})
    with pytest.raises(ValueError, match="DEC trains once"):
        override_all(DECJobConfig(), {"restarts.count": 2})
    with pytest.raises(ValueError, match="no setting 'restart.count'; nearest: restarts.count"):
        override_all(DESOMJobConfig(), {"restart.count": 2})
    with pytest.raises(ValueError, match="no setting 'model.nope'"):
        override_all(DESOMJobConfig(), {"model.nope": 2})


def test_orchestration_lives_outside_the_model_configs():
    # What may change on resume is exactly what is not in the model config.
    for cls in (DACJobConfig, DECJobConfig, DESOMJobConfig):
        model = to_dict(cls())["model"]
        assert not {"restarts", "restart_combine", "concurrent_restarts", "min_cluster_size"} & set(model)
    assert "min_cluster_size" in to_dict(DACJobConfig()) and "levels" in to_dict(DESOMJobConfig())


def test_parse_override_types_values():
    assert parse_override("model.tol=0.01") == ("model.tol", 0.01)
    assert parse_override("data.spec=a/b.npz") == ("data.spec", "a/b.npz")
    with pytest.raises(ValueError):
        parse_override("model.tol")


def test_job_flags_override_yaml(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_dec", ROOT / "jobs" / "train_dec.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    args = job.get_args_parser().parse_args(
        ["--config", str(ROOT / "configs" / "train_dec.yaml"), "--k", "4", "--variant", "idec",
         "--smoke-test", "--set", "model.tol=0.5"]
    )
    cfg = job.build_config(args)
    assert (cfg.model.n_clusters, cfg.model.variant, cfg.model.tol) == (4, "idec", 0.5)
    assert cfg.data.limit == 300  # from --smoke-test
    assert job.main(job.get_args_parser().parse_args(["--k", "0"])) == 2  # clear error, no work


def test_a_stored_config_without_a_newer_setting_reads_as_its_default():
    stored = to_dict(DACJobConfig())
    del stored["model"]["convs_per_stage"]  # a run written before the setting existed
    assert stored_settings(DACJobConfig, stored) == to_dict(DACJobConfig())
    stored["model"]["retired_setting"] = 1
    with pytest.raises(ValueError, match="retired_setting"):
        stored_settings(DACJobConfig, stored)


def test_feature_settings_are_checked_when_made(tmp_path):
    from deimos_ray.config import FeatureConfig

    assert not FeatureConfig().enabled and FeatureConfig(backbone="efficientnet_lite0").enabled
    with pytest.raises(ValueError, match="need --backbone"):
        FeatureConfig(image_size=128)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FeatureConfig(backbone="torchvision:resnet50", weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="normalize"):
        FeatureConfig(backbone="efficientnet_lite0", normalize="whiten")
