"""Pretrained backbones: the shipped EfficientNet-Lite0 weights give the expected ImageNet
class on a known image, features come with the backbone's preprocessing, and weights
files that are missing or do not fit are clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from torchvision.models import ResNet18_Weights

from deimos_ray.config import DataConfig, FeatureConfig
from deimos_ray.data.feature_cache import cache_key
from deimos_ray.data.sources import load_source
from deimos_ray.models.backbones import (
    check_backbone,
    efficientnet_lite0,
    fetch_library_weights,
    load_backbone,
)

CATEGORIES = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet's class names


def sample_image(name: str) -> torch.Tensor:
    """One of scikit-learn's two sample photographs (shipped with it) as (1, 3, 224, 224) in [0, 1]."""
    image = Image.fromarray(load_sample_image(name)).resize((224, 224), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]


def test_the_shipped_weights_name_the_flower_a_daisy():
    backbone = load_backbone("efficientnet_lite0")
    classifier = efficientnet_lite0(with_classifier=True)
    with torch.no_grad():
        flower = classifier(backbone.preprocess(sample_image("flower.jpg"))).softmax(1)[0]
        temple = classifier(backbone.preprocess(sample_image("china.jpg"))).softmax(1)[0]
    assert CATEGORIES[int(flower.argmax())] == "daisy"
    assert {"bell cote", "palace", "dome", "monastery"} & {CATEGORIES[int(i)] for i in temple.topk(3).indices}


def test_features_are_the_pooled_trunk_and_grayscale_is_replicated():
    backbone = load_backbone("efficientnet_lite0")
    x = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        features = backbone(x)
        assert features.shape == (2, 1280)
        torch.testing.assert_close(features, backbone(x.expand(-1, 3, -1, -1)))
        small = load_backbone("efficientnet_lite0", image_size=128)
        assert small(x).shape == (2, 1280) and not torch.allclose(small(x), features)
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training


def test_none_is_the_flattened_pixels():
    x = torch.rand(3, 1, 4, 4)
    assert torch.equal(load_backbone("none")(x), x.flatten(1))


def test_a_torchvision_model_loads_from_a_named_file_and_bad_files_are_clear_errors(tmp_path):
    from torchvision.models import resnet18, resnet34

    torch.manual_seed(0)
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    backbone = load_backbone("torchvision:resnet18", weights=str(path), image_size=64)
    assert backbone.out_dim == 512
    torch.testing.assert_close(backbone.features.conv1.weight, reference.conv1.weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone("torchvision:resnet18", weights=str(tmp_path / "missing.pt"))
    torch.save(resnet34(weights=None).state_dict(), tmp_path / "resnet34.pt")
    with pytest.raises(ValueError, match="does not fit backbone 'torchvision:resnet18'"):
        load_backbone("torchvision:resnet18", weights=str(tmp_path / "resnet34.pt"))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a weights-only state dict"):
        load_backbone("torchvision:resnet18", weights=str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("resnet18")


def test_a_torchvision_model_without_a_file_uses_torchs_cache_and_says_how_to_fill_it(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, *args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ValueError, match=r"cannot download torchvision:resnet18's weights .*resnet18-f37072fd\.pth"):
        check_backbone("torchvision:resnet18")
    # What the advice says: the library's file in torch's cache; nothing is fetched then.
    torch.manual_seed(1)
    reference = resnet18(weights=None)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), cached)
    check_backbone("torchvision:resnet18")
    assert fetch_library_weights("torchvision:resnet18") == cached
    backbone = load_backbone("torchvision:resnet18", image_size=64)
    torch.testing.assert_close(backbone.features.conv1.weight, reference.conv1.weight)


def test_a_timm_model_without_a_file_uses_the_hugging_face_cache_and_says_how_to_fill_it(tmp_path, monkeypatch):
    import huggingface_hub
    import timm
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # nothing may reach the Hub here
    with pytest.raises(ValueError, match=r"cannot download timm:resnet18's weights .*models--timm--resnet18\.a1_in1k"):
        check_backbone("timm:resnet18")
    with pytest.raises(ValueError, match="timm has no model 'resnet181'; nearest: resnet18"):
        check_backbone("timm:resnet181")
    # A pretrained tag names one of the model's weights: known, so only the download is missing.
    with pytest.raises(ValueError, match=r"cannot download timm:vit_small_patch16_224\.dino's weights"):
        check_backbone("timm:vit_small_patch16_224.dino")
    with pytest.raises(ValueError, match="timm has no model 'resnet18.nope'"):
        check_backbone("timm:resnet18.nope")
    # What the advice says: the Hub's folder in the cache, as timm's own download leaves it.
    torch.manual_seed(2)
    reference = timm.create_model("resnet18", pretrained=False)
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    save_file(reference.state_dict(), snapshot / "model.safetensors")
    check_backbone("timm:resnet18")
    assert fetch_library_weights("timm:resnet18") == snapshot / "model.safetensors"
    backbone = load_backbone("timm:resnet18", image_size=64)
    torch.testing.assert_close(backbone.features.conv1.weight, reference.conv1.weight)
    assert backbone.out_dim == 512  # the classifier dropped, the pooled features kept
    # The same file named as --backbone-weights (a safetensors file) gives the same network.
    named = load_backbone("timm:resnet18", str(snapshot / "model.safetensors"), image_size=64)
    torch.testing.assert_close(named.features.conv1.weight, reference.conv1.weight)
    # The Hub's file can change under the same name: the feature cache's key follows its contents.
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "a.png")
    data = DataConfig(spec=str(tmp_path / "images"))
    key = lambda: cache_key(load_source(data), data, FeatureConfig(backbone="timm:resnet18"), 64)  # noqa: E731
    before = key()
    assert key() == before
    torch.manual_seed(3)
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), snapshot / "model.safetensors")
    assert key() != before


def test_a_timm_model_is_normalised_as_its_weights_were_trained(tmp_path):
    import timm

    weights = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=False).state_dict(), weights)
    vit = load_backbone("timm:vit_tiny_patch16_224.augreg_in21k", str(weights))
    torch.testing.assert_close(vit.mean.flatten(), torch.full((3,), 0.5))  # not ImageNet's (0.485, ...)
    torch.testing.assert_close(vit.std.flatten(), torch.full((3,), 0.5))
    assert vit(torch.rand(2, 1, 40, 40)).shape == (2, vit.out_dim) == (2, 192)
