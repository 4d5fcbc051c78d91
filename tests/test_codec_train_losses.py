"""Codec losses and discriminators: zero on identical inputs, positive otherwise, output shapes."""
import pytest
import torch

from codec.discriminators import CodecDiscriminator, DiscriminatorConfig
from codec.losses import (
    ReconstructionLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adv_loss,
    weighted_sum,
)


def test_reconstruction_losses_zero_iff_identical():
    x = torch.randn(2, 1, 8000) * 0.1
    rec = ReconstructionLoss()
    same = rec(x, x.clone())
    assert set(same) == {"recon/mel", "recon/stft_sc", "recon/stft_mag"}
    assert all(v.item() == pytest.approx(0.0, abs=1e-6) for v in same.values())
    diff = rec(x + 0.05 * torch.randn_like(x), x)
    assert all(v.item() > 1e-3 for v in diff.values())
    with pytest.raises(ValueError, match=r"\[B, 1, N\]"):
        rec(x[:, 0], x[:, 0])


def test_adversarial_and_feature_matching():
    real = [torch.full((2, 5), 2.0)]
    fake = [torch.full((2, 5), -2.0)]
    assert discriminator_loss(real, fake, "hinge").item() == 0.0  # confident, correct discriminator
    assert discriminator_loss(fake, real, "hinge").item() > 0
    assert generator_adv_loss(fake, "lsgan").item() == pytest.approx(9.0)
    f = [[torch.randn(2, 3, 4), torch.randn(2, 8)]]
    assert feature_matching_loss(f, f).item() == 0.0
    assert feature_matching_loss(f, [[t + 1 for t in f[0]]]).item() > 0
    with pytest.raises(ValueError, match="hinge"):
        generator_adv_loss(fake, "wgan")


def test_weighted_sum_one_line():
    losses = {"a/x": torch.tensor(2.0), "b/y": torch.tensor(3.0), "c/logged": torch.tensor(100.0)}
    assert weighted_sum(losses, {"a/x": 1.0, "b/y": 2.0}).item() == 8.0
    with pytest.raises(ValueError, match="no weighted loss"):
        weighted_sum(losses, {"z/z": 1.0})


def test_discriminator_shapes_and_grad():
    cfg = DiscriminatorConfig(mpd_channels=(4, 8), stft_ffts=(256, 128), stft_channels=4)
    d = CodecDiscriminator(cfg)
    out = d(torch.randn(2, 1, 4000, requires_grad=True))
    assert len(out.logits) == len(cfg.periods) + len(cfg.stft_ffts) == len(out.features)
    for logits, feats in zip(out.logits, out.features):
        assert logits.dim() == 2 and logits.shape[0] == 2 and len(feats) >= 3
    discriminator_loss(out.logits, out.logits).backward()
    assert all(p.grad is not None for p in d.parameters())
    with pytest.raises(ValueError, match=r"\[B, 1, N\]"):
        d(torch.randn(2, 4000))
