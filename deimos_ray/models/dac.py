"""DAC: Deep Adaptive Clustering (Chang, Wang, Meng, Xiang and Pan, ICCV 2017).

The network maps an image to k "label features": a softmax, L2-normalised, so the
cosine similarity of two images is a dot product in [0, 1]. Training alternates, batch
by batch, between *selection* with the current network and *learning* on what was
selected:

    sim_ij = l_i . l_j                                     (cosine similarity)
    r_ij   = 1 if sim_ij >= u,  0 if sim_ij < l,  else the pair is ignored
    L      = mean over selected pairs of  -r log sim - (1 - r) log(1 - sim)

and the thresholds move each epoch so that more pairs are selected as the network
improves (u falls, l rises) until u <= l. Three schedules (``schedule``):

- ``paper`` (default): u = 0.95 - λ, l = 0.455 + 0.1 λ, λ += 1.1 x 0.009 after each
  epoch; training stops when u <= l, after 46 epochs.
- ``deimos``: u = u0 - u_coeff λ, l = l0 + l_coeff λ with every constant an option (the
  DeIMOS Mars project's tuning knobs). Its defaults are the paper's values.
- ``official``: the reference code (vector-1127/DAC), which differs from the paper: a
  single threshold th starts at ``official_upper`` (0.99) and falls by
  (official_upper - official_lower) / epochs each epoch; EVERY pair is used, "same"
  when sim >= th and "different" otherwise (u = l = th), for all ``epochs``. Its
  auxiliary self-labelling loss is not reproduced.

The paper names RMSprop and its learning rate (0.001) but not the decay of the squared
gradients' running mean; the default, ``rmsprop_alpha=0.9``, is the reference code's
(Keras's RMSprop default); PyTorch's own default, 0.99, is the other common choice.

Two more settings of the reference code are options, off by default:

- ``selection="chunk"`` (reference MNIST script): instead of selecting within each
  training batch, the current network labels the pairs of a chunk of ``chunk_size``
  un-augmented images once (batch norm using the chunk's own statistics, as the
  reference's Keras ``BatchNormalization(mode=2)`` does), and then trains
  ``inner_passes`` passes of augmented mini-batches against those fixed targets. An
  image's view is pulled towards what the network says about the clean image, which
  makes the targets more stable than per-batch selection.
- ``pair_loss="mse"`` (reference code): squared error between the similarity and the
  0/1 target instead of the paper's binary cross-entropy.

The pair loss itself is in :mod:`deimos_ray.losses.dac`; it leaves out the diagonal
(sim_ii = 1 exactly, so its loss and gradient are zero; counting it would only dilute
the average).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deimos_ray.data.augment import AugmentConfig
from deimos_ray.models.backbones import load_backbone

TRUNKS = ("vgg", "resnet18")
HEADS = ("dense", "narrow")
SCHEDULES = ("paper", "deimos", "official")
SELECTIONS = ("batch", "chunk")
PAIR_LOSSES = ("bce", "mse")
PAPER_U0, PAPER_L0, PAPER_U_COEFF, PAPER_L_COEFF = 0.95, 0.455, 1.0, 0.1
PAPER_LAMBDA_STEP = 0.0099  # 1.1 x 0.009

# ``--recipe reference``: the reference MNIST script's training (vector-1127/DAC,
# ``MNIST/mnist.py``), as settings. Its threshold runs from 0.9 to 0.5 over 20 epochs;
# this ends at 0.7, as the last epochs below 0.7 merged clusters in trials on the digits.
# Its augmentation: rotations up to 10 degrees, shifts up to 10 %, zoom 0.95-1.05 and a
# small intensity shift. Its network's narrow end is ``model.head=narrow``, kept out of
# the recipe so the recipe changes the training, not the network.
REFERENCE_RECIPE = {
    "model.schedule": "official", "model.official_upper": 0.9, "model.official_lower": 0.7,
    "model.epochs": 20, "model.selection": "chunk", "model.chunk_size": 1000,
    "model.inner_passes": 5, "model.pair_loss": "mse",
    "model.augmentation.rotate_degrees": 10.0, "model.augmentation.shift": 0.1,
    "model.augmentation.zoom": [0.95, 1.05], "model.augmentation.crop_scale": [1.0, 1.0],
    "model.augmentation.brightness": 0.05, "model.augmentation.contrast": 0.0,
}
RECIPES = {"paper": {}, "reference": REFERENCE_RECIPE}


def digit_safe_augmentation() -> AugmentConfig:
    """Crops and brightness/contrast only: rotations and flips would turn a 6 into a 9."""
    return AugmentConfig(rotate90=False, hflip=False, vflip=False, crop_scale=(0.7, 1.0))


@dataclass(frozen=True)
class DACConfig:
    """Hyperparameters of DAC. Defaults follow the paper unless noted.

    Attributes:
        n_clusters: Number of clusters k (the size of the label features).
        trunk: The network under the head, for image inputs: ``vgg`` (default: stacks of
            3x3 convolutions with batch norm and ReLU, max pooling, then dense layers,
            the shape of the DAC paper's and the DeIMOS networks) or ``resnet18``
            (torchvision's, randomly initialised or loaded from ``trunk_weights``). On
            feature vectors (``--backbone``) there is no trunk: the head works on the
            pretrained features, and training makes no augmented views (vectors have
            no pixels to crop or rotate), as in the paper; with ``fine_tune_backbone``
            the trunk is the pretrained backbone itself.
        trunk_weights: A local file holding a ResNet-18 state dict (nothing is ever
            downloaded). The final ``fc`` layer's weights are ignored.
        fine_tune_backbone: With ``--backbone``: train the pretrained backbone under the
            head with the pair loss, on the images (decoded at ``--feature-size``, with
            the augmented views), instead of training the head alone on the cached
            features. The trunk's learning rate is ``lr * trunk_lr_ratio``, lower than
            the head's, so the pretrained weights move slowly (SCAN, Van Gansbeke et al.
            2020, fine-tunes its backbone the same way). Off by default: on CPUs each
            epoch costs a forward and backward pass of the backbone over every image.
        trunk_lr_ratio: The backbone's learning rate as a fraction of ``lr`` when
            fine-tuning (default 0.1).
        conv_widths: Channels of each VGG stage (``convs_per_stage`` 3x3 convolutions,
            then 2x2 max pooling while the feature map is larger than 1x1). The paper's
            MNIST net uses 64 and 128; the default is narrower so a CPU trains it in minutes.
        convs_per_stage: 3x3 convolutions in each VGG stage (default 2; the paper's and
            the reference code's MNIST net has 3). Padded, unlike the reference's, so
            8x8 and 16x16 images keep a feature map to pool.
        hidden_dim: Width of the dense layer before the k-way output (``head="dense"``).
        head: ``dense`` (default: dense-BN-ReLU of ``hidden_dim``, then a dense-BN k-way
            layer whose outputs are the logits) or ``narrow``, the end of the reference
            code's MNIST network: a k-wide layer (its 1x1 convolution; here after the
            pooling) and two k-wide dense layers started at the identity, each with
            batch norm and ReLU, so the softmax sees non-negative logits standardised
            over the batch.
        schedule: ``paper``, ``deimos`` or ``official`` (module docstring).
        u0, l0, u_coeff, l_coeff, lambda_step: The ``deimos`` schedule's constants.
        official_upper, official_lower: The ``official`` schedule's start and end
            (reference code, CIFAR-10: 0.99 and 0.75).
        epochs: Upper bound on epochs; ``paper`` and ``deimos`` stop earlier when
            u <= l; ``official`` runs exactly this many.
        batch_size: Images per step, global across workers; pairs are selected among
            them (paper and reference: selection over batches of this order).
        lr: RMSprop learning rate (paper and reference code: 0.001).
        rmsprop_alpha: RMSprop's decay of the running mean of squared gradients. The
            paper does not give it; the default, 0.9, is the reference code's (Keras's
            RMSprop default, its ``rho``). PyTorch's default, 0.99, adapts the step
            more slowly to the gradient's scale and, from the zero start, makes the
            first steps about three times larger.
        augment: Train on two random views of every image, an image and its view being a
            "same" pair (the reference code also trains on augmented images).
        augmentation: Which augmentations make the views. The default keeps orientation
            (crops, brightness, contrast); for orbital or sky images add rotations and
            flips (``augmentation.rotate90=true`` etc.).
        labeled_fraction: DeIMOS extension. Fraction (0-1] of the rows with a known
            label whose labels supervise training: pairs of them are must-link (same
            label) or cannot-link; 0 uses none.
        labeled_weight: Weight of the labelled-pair loss against the selected-pair loss.
        gather_pairs: With several workers, all-gather the label features so pairs are
            selected across the global batch, not within each worker's share
            (``selection="batch"`` only).
        selection: ``batch`` (paper: every training batch selects its own pairs with the
            current network) or ``chunk`` (reference MNIST code; module docstring).
        chunk_size: Images per chunk (global across workers) with ``selection="chunk"``
            (reference: 1,000). Their targets come from one forward pass.
        inner_passes: Passes over each chunk's augmented images (reference: 5).
        pair_loss: ``bce`` (paper) or ``mse`` (reference code: squared error).
    """

    n_clusters: int = 10
    trunk: str = "vgg"
    trunk_weights: str | None = None
    fine_tune_backbone: bool = False
    trunk_lr_ratio: float = 0.1
    conv_widths: tuple[int, ...] = (32, 64, 128)
    convs_per_stage: int = 2
    hidden_dim: int = 128
    head: str = "dense"
    schedule: str = "paper"
    u0: float = PAPER_U0
    l0: float = PAPER_L0
    u_coeff: float = PAPER_U_COEFF
    l_coeff: float = PAPER_L_COEFF
    lambda_step: float = PAPER_LAMBDA_STEP
    official_upper: float = 0.99
    official_lower: float = 0.75
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    rmsprop_alpha: float = 0.9
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=digit_safe_augmentation)
    labeled_fraction: float = 0.0
    labeled_weight: float = 1.0
    gather_pairs: bool = False
    selection: str = "batch"
    chunk_size: int = 1000
    inner_passes: int = 5
    pair_loss: str = "bce"

    def __post_init__(self) -> None:
        if self.n_clusters < 2:
            raise ValueError(f"model.n_clusters must be >= 2, got {self.n_clusters}")
        if self.trunk not in TRUNKS:
            raise ValueError(f"model.trunk must be one of {TRUNKS}, got {self.trunk!r}")
        if self.trunk_weights is not None:
            if self.trunk != "resnet18":
                raise ValueError("model.trunk_weights needs model.trunk=resnet18")
            if not Path(self.trunk_weights).is_file():
                raise FileNotFoundError(f"trunk weights file {self.trunk_weights} does not exist")
        if not 0 < self.trunk_lr_ratio <= 1:
            raise ValueError(f"model.trunk_lr_ratio must be in (0, 1], got {self.trunk_lr_ratio}")
        if self.head not in HEADS:
            raise ValueError(f"model.head must be one of {HEADS}, got {self.head!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"model.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.labeled_fraction <= 1:
            raise ValueError(f"model.labeled_fraction must be in [0, 1], got {self.labeled_fraction}")
        if not 0 < self.rmsprop_alpha < 1:
            raise ValueError(f"model.rmsprop_alpha must be in (0, 1), got {self.rmsprop_alpha}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("model.epochs must be >= 1 and model.batch_size >= 2")
        if not self.conv_widths or self.convs_per_stage < 1:
            raise ValueError("model.conv_widths needs at least one stage and model.convs_per_stage >= 1")
        if self.selection not in SELECTIONS:
            raise ValueError(f"model.selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.pair_loss not in PAIR_LOSSES:
            raise ValueError(f"model.pair_loss must be one of {PAIR_LOSSES}, got {self.pair_loss!r}")
        if self.selection == "chunk":
            if self.gather_pairs:
                raise ValueError("model.gather_pairs works with model.selection=batch only")
            if self.chunk_size < self.batch_size or self.inner_passes < 1:
                raise ValueError("model.chunk_size must be >= model.batch_size and model.inner_passes >= 1")
        if self.schedule == "official" and not self.official_lower < self.official_upper:
            raise ValueError("model.official_lower must be below model.official_upper")


# --------------------------------------------------------------------------- schedules
def thresholds(cfg: DACConfig, lam: float, epoch: int) -> tuple[float, float]:
    """(u, l) for the epoch about to run, from λ (paper, deimos) or the epoch (official)."""
    if cfg.schedule == "paper":
        return PAPER_U0 - PAPER_U_COEFF * lam, PAPER_L0 + PAPER_L_COEFF * lam
    if cfg.schedule == "deimos":
        return cfg.u0 - cfg.u_coeff * lam, cfg.l0 + cfg.l_coeff * lam
    eta = (cfg.official_upper - cfg.official_lower) / cfg.epochs
    th = cfg.official_upper - eta * epoch
    return th, th


def next_lambda(cfg: DACConfig, lam: float) -> float:
    """λ after one more epoch (the paper's step is 1.1 x 0.009)."""
    if cfg.schedule == "paper":
        return lam + PAPER_LAMBDA_STEP
    if cfg.schedule == "deimos":
        return lam + cfg.lambda_step
    return lam  # official: thresholds follow the epoch count


def schedule_done(cfg: DACConfig, lam: float, epoch: int) -> bool:
    """True when training stops: u <= l (paper, deimos) or all epochs run."""
    if epoch >= cfg.epochs:
        return True
    if cfg.schedule == "official":
        return False
    upper, lower = thresholds(cfg, lam, epoch)
    return upper <= lower


# --------------------------------------------------------------------------- networks
class VGGBackbone(nn.Module):
    """Stages of ``convs`` 3x3 conv-BN-ReLU (two by default) and a 2x2 max pool, then
    global average pooling.

    Pooling stops once the map is 1x1, so any input size (8x8 digits, 64x64 tiles)
    works with any number of stages.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], image_size: int, convs: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for w in widths:
            for _ in range(convs):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class ResNet18Backbone(nn.Module):
    """torchvision's ResNet-18 without its classifier, for 1 or 3 channels.

    Inputs smaller than 64 pixels get a 3x3 stride-1 stem without max pooling (as ResNets
    on CIFAR do), else the ImageNet stem, which loaded weights need. One-channel inputs
    with loaded weights get the first convolution's RGB filters summed.
    """

    def __init__(self, in_channels: int, image_size: int, weights: str | None = None):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
                raise ValueError(f"{weights} is not a ResNet-18 state dict "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
            if in_channels == 1:
                w = net.conv1.weight.data.sum(dim=1, keepdim=True)
                net.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
                net.conv1.weight.data.copy_(w)
        elif image_size < 64:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VectorTrunk(nn.Module):
    """The trunk of DAC on feature vectors: none (the identity), so the head sees them."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class DACNet(nn.Module):
    """Trunk (``self.backbone``), then the head (``DACConfig.head``) that gives the k logits.

    ``forward`` returns the logits; :func:`label_features` turns them into label features.

    Args:
        cfg: The model's settings.
        input_shape: (C, H, W) images or (D,) feature vectors.
        backbone: With ``cfg.fine_tune_backbone``: the pretrained backbone to train as
            the trunk, as ``{"name", "weights", "image_size"}``
            (:func:`deimos_ray.models.backbones.load_backbone`'s arguments).
    """

    def __init__(self, cfg: DACConfig, input_shape: tuple[int, ...], backbone: dict[str, Any] | None = None):
        super().__init__()
        if cfg.fine_tune_backbone != (backbone is not None):
            raise ValueError("model.fine_tune_backbone needs a backbone (--backbone NAME), "
                             "and a backbone trunk needs model.fine_tune_backbone")
        if backbone is not None:
            if len(input_shape) != 3:
                raise ValueError(f"fine-tuning a backbone needs images (C, H, W), got shape {input_shape}")
            self.backbone = load_backbone(backbone["name"], backbone.get("weights"), backbone.get("image_size"))
            self.backbone.requires_grad_(True)  # loaded frozen, for extraction
        elif len(input_shape) == 1:  # feature vectors: the head works on them directly
            self.backbone: nn.Module = VectorTrunk(input_shape[0])
        elif len(input_shape) != 3:
            raise ValueError(f"DAC needs images (C, H, W) or feature vectors (D,), got shape {input_shape}")
        elif cfg.trunk == "vgg":
            channels, height, width = input_shape
            self.backbone = VGGBackbone(channels, cfg.conv_widths, min(height, width), cfg.convs_per_stage)
        else:
            channels, height, width = input_shape
            self.backbone = ResNet18Backbone(channels, min(height, width), cfg.trunk_weights)
        k = cfg.n_clusters
        if cfg.head == "dense":
            self.head = nn.Sequential(
                nn.Linear(self.backbone.out_dim, cfg.hidden_dim, bias=False),
                nn.BatchNorm1d(cfg.hidden_dim),
                nn.ReLU(inplace=True),
                nn.Linear(cfg.hidden_dim, k, bias=False),
                nn.BatchNorm1d(k),
            )
        else:
            layers: list[nn.Module] = []
            for width_in in (self.backbone.out_dim, k, k):
                layers += [nn.Linear(width_in, k, bias=False), nn.BatchNorm1d(k), nn.ReLU(inplace=True)]
            self.head = nn.Sequential(*layers)
            # The k-to-k layers start at the identity, as the reference's do.
            for linear in [m for m in self.head if isinstance(m, nn.Linear)][1:]:
                nn.init.eye_(linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def parameter_groups(self, cfg: DACConfig) -> list[dict[str, Any]]:
        """The optimiser's groups: a fine-tuned backbone at ``lr * trunk_lr_ratio``, the
        rest at ``lr``."""
        if not cfg.fine_tune_backbone:
            return [{"params": list(self.parameters()), "lr": cfg.lr}]
        return [{"params": list(self.backbone.parameters()), "lr": cfg.lr * cfg.trunk_lr_ratio},
                {"params": list(self.head.parameters()), "lr": cfg.lr}]
