"""cluster.yaml passes Ray's own launcher validation and keeps the security settings."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_valid_for_the_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))
    head = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert all("RAY_AUTH_MODE=token" in c for c in raw["worker_start_ray_commands"] if "ray start" in c)
    assert "2.60.0" in raw["docker"]["image"]
    # SSH only through a security group the user names (never the launcher's open one).
    for node_type in raw["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"]
    # Installs follow the project's pins, and the project itself is installed.
    assert raw["setup_commands"] == ["pip install -q -c /home/ray/deimos_ray/constraints.txt -e /home/ray/deimos_ray"]
    assert raw["file_mounts"]["/home/ray/deimos_ray"] == "."
