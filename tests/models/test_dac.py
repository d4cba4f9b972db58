"""DAC's model without Ray: schedules, the steps on fixed networks, the empty selection,
small-cluster reassignment and the networks' shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deimos_ray.algorithms.dac import reassign_small_clusters
from deimos_ray.losses import dac as losses
from deimos_ray.models import dac
from deimos_ray.models.dac import DACConfig, DACNet
from deimos_ray.train.dac_loop import chunk_step_loss, chunk_targets, step_loss
from tests.losses.test_dac import numpy_pair_loss


class FixedNet(torch.nn.Module):
    """Logits = a fixed linear map of the flattened image (no batch norm)."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.linear = torch.nn.Linear(d, k)
        torch.nn.init.normal_(self.linear.weight, std=2.0, generator=torch.Generator().manual_seed(1))

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_step_loss_is_the_papers_loss_and_adds_weighted_labelled_pairs():
    x = torch.rand(10, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    net = FixedNet(9, 3)
    cfg = DACConfig(n_clusters=3, augment=False)
    unknown = torch.full((10,), -1)
    loss, stats = step_loss(net, x, unknown, cfg, 0.9, 0.4, torch.Generator())
    feats = losses.label_features(net(x)).detach().numpy()
    # rel 1e-4: the loss sums -log(s) over similarities s near 1 in float32, and the torch
    # matmul kernel (which differs with the thread count) moves it by about 1e-5.
    assert loss.item() == pytest.approx(numpy_pair_loss(feats, 0.9, 0.4), rel=1e-4)
    assert stats["candidates"] == 90

    known = torch.tensor([0, 0, 1, 1, -1, -1, -1, -1, -1, -1])
    labelled = DACConfig(n_clusters=3, augment=False, labeled_fraction=1.0, labeled_weight=0.5)
    loss2, stats2 = step_loss(net, x, known, labelled, 0.9, 0.4, torch.Generator())
    assert stats2["labeled"] == 12  # 4 known rows: 4 x 3 ordered pairs
    s = np.clip(feats[:4] @ feats[:4].T, 1e-7, 1 - 1e-7)
    must = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], bool)
    cannot = ~must & ~np.eye(4, dtype=bool)
    labelled_mean = (-np.log(s[must]).sum() - np.log(1 - s[cannot]).sum()) / 12
    assert loss2.item() - loss.item() == pytest.approx(0.5 * labelled_mean, rel=1e-4)


def test_chunk_targets_come_from_the_clean_chunk_and_steps_learn_them():
    x = torch.rand(12, 1, 3, 3, generator=torch.Generator().manual_seed(3))
    net = FixedNet(9, 3)
    same, different = chunk_targets(net, x, 0.9, 0.4)
    feats = losses.label_features(net(x)).detach()
    sim = (feats @ feats.T).numpy()
    off = ~np.eye(12, dtype=bool)
    assert np.array_equal(same.numpy(), (sim >= 0.9) & off)
    assert np.array_equal(different.numpy(), (sim < 0.4) & off)

    # A mini-batch of the chunk is scored against the chunk's targets, not reselected.
    cfg = DACConfig(n_clusters=3, augment=False, selection="chunk", pair_loss="mse", chunk_size=128)
    mini = torch.tensor([0, 3, 5, 7, 11])
    pick = mini[:, None], mini[None, :]
    flipped_same, flipped_diff = different[pick], same[pick]  # deliberately wrong targets
    loss, stats = chunk_step_loss(net, x[mini], torch.full((5,), -1), flipped_same, flipped_diff,
                                  cfg, torch.Generator())
    s = sim[np.ix_(mini.numpy(), mini.numpy())]
    fs, fd = flipped_same.numpy(), flipped_diff.numpy()
    expected = (((1 - s) ** 2)[fs].sum() + (s**2)[fd].sum()) / max(fs.sum() + fd.sum(), 1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["candidates"] == 20


def test_training_settings_are_checked():
    with pytest.raises(ValueError, match="gather_pairs"):
        DACConfig(selection="chunk", gather_pairs=True)
    with pytest.raises(ValueError, match="chunk_size"):
        DACConfig(selection="chunk", chunk_size=64, batch_size=128)
    with pytest.raises(ValueError, match="pair_loss"):
        DACConfig(pair_loss="l1")
    with pytest.raises(ValueError, match="rmsprop_alpha"):
        DACConfig(rmsprop_alpha=1.0)


def test_a_batch_with_no_selected_pair_contributes_nothing_and_does_not_crash():
    net = FixedNet(4, 3)
    x = torch.rand(6, 1, 2, 2)
    cfg = DACConfig(n_clusters=3, augment=False)
    loss, stats = step_loss(net, x, torch.full((6,), -1), cfg, 1.1, -0.1, torch.Generator())
    assert stats["selected"] == 0 and loss.item() == 0.0
    loss.backward()
    assert net.linear.weight.grad is not None and not net.linear.weight.grad.any()


def run_schedule(cfg: DACConfig) -> list[tuple[float, float]]:
    lam, epoch, seen = 0.0, 0, []
    while not dac.schedule_done(cfg, lam, epoch):
        seen.append(dac.thresholds(cfg, lam, epoch))
        lam, epoch = dac.next_lambda(cfg, lam), epoch + 1
    return seen


def test_paper_schedule_values_and_stop_after_46_epochs():
    seen = run_schedule(DACConfig())
    assert seen[0] == pytest.approx((0.95, 0.455))
    assert seen[1] == pytest.approx((0.95 - 0.0099, 0.455 + 0.00099))
    assert len(seen) == 46  # 0.95 - λ <= 0.455 + 0.1 λ from λ = 0.45
    assert all(u > low for u, low in seen)
    assert not dac.schedule_done(DACConfig(), 45 * 0.0099, 45)
    assert dac.schedule_done(DACConfig(), 46 * 0.0099, 46)


def test_deimos_schedule_uses_its_coefficients_and_official_uses_one_threshold():
    cfg = DACConfig(schedule="deimos", u0=0.9, l0=0.2, u_coeff=2.0, l_coeff=1.0, lambda_step=0.1)
    assert run_schedule(cfg) == [pytest.approx(v) for v in [(0.9, 0.2), (0.7, 0.3), (0.5, 0.4)]]
    official = run_schedule(DACConfig(schedule="official", epochs=4))
    assert [u for u, _ in official] == pytest.approx([0.99, 0.93, 0.87, 0.81])
    assert all(u == low for u, low in official)  # every pair is "same" or "different"
    sim = torch.tensor([[0.95, 0.2], [0.2, 0.95]])
    same, different = losses.select_pairs(sim, 0.93, 0.93)
    assert (same | different).all()


def test_small_clusters_move_to_the_most_similar_remaining_cluster():
    # Clusters 0 and 1 are large; 2 (3 images) looks like 1, 3 (1 image) looks like 0.
    features = torch.tensor([[1.0, 0, 0]] * 5 + [[0, 1.0, 0]] * 5 + [[0.1, 0.9, 0.1]] * 3 + [[0.8, 0.1, 0.2]])
    clusters = torch.tensor([0] * 5 + [1] * 5 + [2] * 3 + [3])
    merged, mapping = reassign_small_clusters(clusters, features, min_size=4)
    assert mapping == {2: 1, 3: 0}
    assert merged.tolist() == [0] * 5 + [1] * 8 + [0]
    unchanged, none = reassign_small_clusters(clusters, features, min_size=1)
    assert none == {} and torch.equal(unchanged, clusters)


@pytest.mark.parametrize("backbone,shape", [("vgg", (1, 8, 8)), ("vgg", (3, 33, 20)), ("resnet18", (1, 16, 16))])
def test_networks_take_any_size_and_channels(backbone, shape):
    cfg = DACConfig(n_clusters=5, trunk=backbone, conv_widths=(4, 8), hidden_dim=8)
    net = DACNet(cfg, shape).eval()
    assert net(torch.rand(3, *shape)).shape == (3, 5)


@pytest.mark.parametrize("convs", [1, 3])
def test_vgg_stages_hold_the_asked_number_of_convolutions(convs):
    net = DACNet(DACConfig(n_clusters=5, conv_widths=(4, 8), convs_per_stage=convs), (1, 8, 8))
    convolutions = [m for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convolutions] == [4] * convs + [8] * convs
    assert net.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match="convs_per_stage"):
        DACConfig(convs_per_stage=0)


@pytest.mark.parametrize("backbone", ["vgg", "resnet18"])
def test_narrow_head_gives_non_negative_logits_through_identity_started_layers(backbone):
    cfg = DACConfig(n_clusters=4, trunk=backbone, conv_widths=(4, 8), head="narrow")
    net = DACNet(cfg, (1, 12, 12))
    linears = [m for m in net.head if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(4, net.backbone.out_dim), (4, 4), (4, 4)]
    assert all(torch.equal(m.weight, torch.eye(4)) for m in linears[1:])
    logits = net(torch.rand(6, 1, 12, 12))  # training mode: batch norm over these six
    assert logits.shape == (6, 4) and (logits >= 0).all() and (logits > 0).any()
    with pytest.raises(ValueError, match="model.head"):
        DACConfig(head="wide")
    # A backbone as wide as k: only the two k-to-k layers start at the identity.
    square = DACNet(DACConfig(n_clusters=4, conv_widths=(4, 4), head="narrow"), (1, 12, 12))
    first = next(m for m in square.head if isinstance(m, torch.nn.Linear))
    assert first.weight.shape == (4, 4) and not torch.equal(first.weight, torch.eye(4))


def test_resnet18_loads_weights_from_a_named_file(tmp_path):
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    cfg = DACConfig(n_clusters=4, trunk="resnet18", trunk_weights=str(path))
    net = DACNet(cfg, (1, 64, 64))
    assert torch.allclose(net.backbone.net.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert torch.allclose(net.backbone.net.conv1.weight[:, 0], reference.conv1.weight.sum(dim=1))
    with pytest.raises(FileNotFoundError):
        DACConfig(trunk="resnet18", trunk_weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="resnet18"):
        DACConfig(trunk_weights=str(path))


def test_on_feature_vectors_the_head_sees_the_vectors_themselves():
    net = DACNet(DACConfig(n_clusters=4, hidden_dim=8), (1280,))
    assert net.backbone.out_dim == 1280 and not list(net.backbone.parameters())
    assert net(torch.randn(6, 1280)).shape == (6, 4)
    with pytest.raises(ValueError, match="feature vectors"):
        DACNet(DACConfig(n_clusters=4), (3, 8))


def test_a_fine_tuned_backbone_learns_at_a_lower_rate_and_its_weights_move():
    cfg = DACConfig(n_clusters=3, hidden_dim=8, fine_tune_backbone=True, trunk_lr_ratio=0.1)
    net = DACNet(cfg, (1, 32, 32), {"name": "efficientnet_lite0", "image_size": 32})
    trunk, head = net.parameter_groups(cfg)
    assert trunk["lr"] == pytest.approx(0.1 * head["lr"])
    assert all(p.requires_grad for p in trunk["params"])
    assert {id(p) for p in trunk["params"]} | {id(p) for p in head["params"]} == {id(p) for p in net.parameters()}
    before = [p.detach().clone() for p in trunk["params"]]
    opt = torch.optim.RMSprop(net.parameter_groups(cfg), lr=cfg.lr)
    net.train()
    loss = net(torch.rand(6, 1, 32, 32)).logsumexp(dim=1).mean()
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trunk["params"], strict=True))
    with pytest.raises(ValueError, match="fine_tune_backbone"):
        DACNet(cfg, (1, 32, 32))  # the setting without a backbone
    with pytest.raises(ValueError, match="needs images"):
        DACNet(cfg, (1280,), {"name": "efficientnet_lite0"})

