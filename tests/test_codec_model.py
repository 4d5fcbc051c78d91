"""Behaviour of the dual-stream codec family on tiny configs (every variant)."""
import math

import pytest
import torch
import torch.nn.functional as F

from codec import CodecConfig as LazyConfig
from codec.config import VARIANTS, CodecConfig
from codec.contracts import Codec, CodecTokens
from codec.model import DualStreamCodec, TeacherBatch

SR = 16000


def make(variant: str, **kw) -> DualStreamCodec:
    cfg = CodecConfig.tiny(variant)
    for k, v in kw.items():
        setattr(cfg, k, v)
    m = DualStreamCodec(cfg)
    if m.needs_teacher_codebook:
        m.set_teacher_codebook(torch.randn(cfg.semantic_codebook_size, cfg.teacher_dim))
    return m


def teacher_for(m: DualStreamCodec, wav: torch.Tensor, seed: int = 0) -> TeacherBatch:
    g = torch.Generator().manual_seed(seed)
    b, n = wav.shape[0], wav.shape[-1]
    ts = math.ceil(n / m.semantic_hop)
    tt = math.ceil(n / SR * 50)
    return TeacherBatch(features=torch.randn(b, tt, m.config.teacher_dim, generator=g),
                        units=torch.randint(0, m.semantic_codebook_size, (b, ts), generator=g), feature_rate=50.0)


def mel_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    spec = lambda x: torch.stft(x[:, 0], 512, 128, window=torch.hann_window(512), return_complex=True).abs()
    return F.l1_loss(torch.log(spec(a) + 1e-5), torch.log(spec(b) + 1e-5))


@pytest.mark.parametrize("variant", VARIANTS)
def test_encode_decode_shapes(variant):
    m = make(variant).eval()
    assert isinstance(m, Codec)
    wav = torch.randn(2, 1, 3000) * 0.1
    tok = m.encode(wav, teacher_for(m, wav))
    ts = math.ceil(3000 / m.semantic_hop)
    assert tok.semantic.shape == (2, m.n_semantic_codebooks, ts) and tok.semantic.dtype == torch.long
    ka = m.n_acoustic_codebooks
    r = m.config.ratio if ka else 1
    assert tok.acoustic.shape == (2, ka, ts * r)
    assert int(tok.semantic.max()) < m.semantic_codebook_size
    if ka:
        assert int(tok.acoustic.max()) < m.acoustic_codebook_size
        assert m.acoustic_rate == pytest.approx(m.semantic_rate * r)
    y = m.decode(tok)
    assert y.shape == (2, 1, ts * m.semantic_hop)  # N rounded up to whole semantic frames
    assert torch.isfinite(y).all()
    out = m(wav, teacher_for(m, wav))
    assert out.wav_hat.shape == wav.shape
    assert all(v.dim() == 0 and "/" in k for k, v in out.losses.items())


@pytest.mark.parametrize("variant", VARIANTS)
def test_bitrate_formula(variant):
    cfg = CodecConfig.default(variant)
    m = DualStreamCodec(CodecConfig.tiny(variant))
    want = m.semantic_rate * m.n_semantic_codebooks * math.log2(m.semantic_codebook_size)
    if m.n_acoustic_codebooks:
        want += m.acoustic_rate * m.n_acoustic_codebooks * math.log2(m.acoustic_codebook_size)
    assert m.bitrate == pytest.approx(want)
    assert 100 < cfg.bitrate <= 1100  # every default aims at <= ~1 kbps
    assert m.hop_length == SR / (m.acoustic_rate or m.semantic_rate)


def test_default_bitrates_and_yaml(tmp_path):
    assert CodecConfig.default("sac").bitrate == pytest.approx(12.5 * 10 + 50 * 14)
    assert CodecConfig.default("stacodec").bitrate == pytest.approx(12.5 * 8 * 10)
    assert CodecConfig.default("secousticodec").bitrate == pytest.approx(12.5 * math.log2(6561))
    assert CodecConfig.from_yaml("configs/codec/secousticodec_1kbps.yaml").bitrate == pytest.approx(80 * math.log2(6561))
    for v in VARIANTS:
        assert CodecConfig.from_yaml(f"configs/codec/{v}.yaml") == CodecConfig.default(v)
    c = CodecConfig.tiny("sacodec")
    c.to_yaml(tmp_path / "c.yaml")
    assert CodecConfig.from_yaml(tmp_path / "c.yaml") == c
    assert LazyConfig is CodecConfig
    with pytest.raises(ValueError, match="unknown codec variant"):
        CodecConfig(variant="nope")
    with pytest.raises(ValueError, match="unknown CodecConfig keys"):
        CodecConfig.from_dict({"variant": "sac", "dimm": 3})


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_identical(variant, tmp_path):
    m = make(variant).eval()
    wav = torch.randn(1, 1, 4000) * 0.1
    tok = m.encode(wav, teacher_for(m, wav))
    m.save_pretrained(tmp_path / "fp32")
    m2 = DualStreamCodec.from_pretrained(tmp_path / "fp32")
    assert torch.equal(m.decode(tok), m2.decode(tok))
    assert torch.equal(m2.encode(wav, teacher_for(m, wav)).semantic, tok.semantic)
    m.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    m3 = DualStreamCodec.from_pretrained(tmp_path / "fp16")
    assert all(p.dtype == torch.float32 for p in m3.parameters())
    assert (tmp_path / "fp16/model.safetensors").stat().st_size < (tmp_path / "fp32/model.safetensors").stat().st_size
    assert torch.isfinite(m3.decode(tok)).all()


def test_load_errors(tmp_path):
    import json

    m = make("rvq")
    m.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["variant"] == "rvq"
    meta["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version"):
        DualStreamCodec.from_pretrained(tmp_path)
    meta["format_version"], meta["codec"]["dim"] = 1, 48
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not fit"):
        DualStreamCodec.from_pretrained(tmp_path)
    meta["codec"]["dim"], meta["variant"] = 32, "sac"
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="variant"):
        DualStreamCodec.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        DualStreamCodec.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_steps_lower_loss(variant):
    m = make(variant).train()
    wav = torch.sin(torch.arange(6400) / SR * 2 * math.pi * torch.tensor([[220.0], [330.0]]))[:, None] * 0.3
    wav = wav + 0.01 * torch.randn_like(wav)
    teacher = teacher_for(m, wav)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    w = m.config.loss_weights

    def loss_now():
        out = m(wav, teacher)
        return out.weighted_loss(w, {"mel/l1": mel_l1(out.wav_hat, wav)})

    first = float(loss_now().detach())
    for _ in range(12):
        opt.zero_grad()
        loss = loss_now()
        loss.backward()
        opt.step()
    assert float(loss_now().detach()) < first


@pytest.mark.parametrize("variant", ["sac", "secousticodec"])
def test_bad_input_raises(variant):
    m = make(variant).eval()
    good = torch.randn(1, 1, 2000) * 0.1
    t = teacher_for(m, good)
    with pytest.raises(ValueError, match="sample rate"):
        m.encode(good, t, sample_rate=8000)
    with pytest.raises(ValueError, match="channel"):
        m.encode(torch.randn(1, 2, 2000), t)
    with pytest.raises(ValueError, match="stereo"):
        m.encode(torch.randn(2, 2000), t)
    with pytest.raises(ValueError, match="empty"):
        m.encode(torch.zeros(1, 1, 0), t)
    bad = good.clone()
    bad[0, 0, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m.encode(bad, t)
    tok = m.encode(good, t)
    with pytest.raises(ValueError, match="codes must lie"):
        m.decode(CodecTokens(semantic=tok.semantic + 10_000, acoustic=tok.acoustic, global_=tok.global_))


def test_sac_needs_teacher():
    m = make("sac").eval()
    wav = torch.randn(1, 1, 2000) * 0.1
    assert m.needs_teacher_at_encode and m.needs_teacher_codebook
    with pytest.raises(ValueError, match="encodes with its teacher"):
        m.encode(wav)
    with pytest.raises(ValueError, match="encodes with its teacher"):
        m(wav)
    with pytest.raises(ValueError, match="teacher codebook must be"):
        m.set_teacher_codebook(torch.randn(3, 3))
    with pytest.raises(ValueError, match="lie in"):
        m.encode(wav, TeacherBatch(units=torch.full((1, 2), 999)))
    assert not make("secousticodec").needs_teacher_at_encode
    with pytest.raises(ValueError, match="no teacher codebook"):
        make("rvq").set_teacher_codebook(torch.randn(16, 16))


def test_teacher_units_used_as_semantic_stream():
    """SAC's semantic stream is the teacher's units themselves, embedded with the frozen centroids."""
    m = make("sac").eval()
    wav = torch.randn(1, 1, 6000) * 0.1
    t = teacher_for(m, wav)
    assert torch.equal(m.encode(wav, t).semantic[:, 0], t.units)
    c = m.bottleneck.teacher_codebook.centroids
    assert not c.requires_grad and "bottleneck.teacher_codebook.centroids" in m.state_dict()


def test_streaming_equals_offline_secousticodec():
    m = make("secousticodec").eval()
    assert m.config.causal
    wav = torch.randn(1, 1, 20000) * 0.1
    tok = m.encode(wav)
    y = m.decode(tok)
    crop = int(m.config.global_crop_s * SR)
    chunks = torch.split(wav, [crop + 300, 1000, 77, 2560, 20000 - crop - 300 - 1000 - 77 - 2560], -1)
    st = list(m.stream_encode(iter(chunks)))
    assert torch.equal(torch.cat([s.semantic for s in st], -1), tok.semantic)
    assert torch.allclose(st[0].global_, tok.global_, atol=1e-5)
    pieces = [CodecTokens(tok.semantic[..., i : i + 3], tok.acoustic[..., i : i + 3], global_=tok.global_)
              for i in range(0, tok.semantic.shape[-1], 3)]
    ys = torch.cat(list(m.stream_decode(iter(pieces))), -1)
    assert ys.shape == y.shape
    assert torch.allclose(ys, y, atol=1e-5)


def test_streaming_needs_causal():
    m = make("rvq").eval()
    with pytest.raises(ValueError, match="causal"):
        list(m.stream_encode(iter([torch.zeros(1, 1, 2000)])))
    mc = make("sacodec", causal=True).eval()
    wav = torch.randn(1, 1, 9000) * 0.1
    st = list(mc.stream_encode(iter(torch.split(wav, 2500, -1))))
    tok = mc.encode(wav)
    assert torch.equal(torch.cat([s.acoustic for s in st], -1), tok.acoustic)


def test_sta_training_codes_are_teacher_units():
    m = make("stacodec").train()
    wav = torch.randn(2, 1, 6400) * 0.1
    t = teacher_for(m, wav)
    out = m(wav, t)
    assert torch.equal(out.tokens.semantic[:, 0], t.units)
    assert "semantic/spd_ce" in out.losses
    assert not make("stacodec").needs_teacher_codebook



def test_sacodec_anchor_loss_rewards_the_teacher_centroid():
    """At the teacher's scale (512-d, squared norms ~600) a projector output sitting on the teacher
    unit's centroid must get a small anchor loss; a softmax temperature of teacher_dim gives a flat
    loss there (the collapse this guards against)."""
    g = torch.Generator().manual_seed(0)
    cents = torch.randn(64, 512, generator=g) * 1.1
    for temperature, ok in ((0.0, lambda x: x < 0.05), (512.0, lambda x: x > 0.5)):
        m = make("sacodec", teacher_dim=512, semantic_codebook_size=64, anchor_temperature=temperature)
        m.set_teacher_codebook(cents)
        b = m.bottleneck
        units = torch.randint(0, 64, (2, 5), generator=g)
        logits = b.teacher_codebook.logits(cents[units]) / (temperature or 512 ** 0.5)
        assert ok(float(F.cross_entropy(logits.transpose(1, 2), units)))


def test_sacodec_anchoring_follows_teacher_units():
    """Training on the anchor loss makes the semantic codes follow the teacher units (no collapse
    onto a few codes)."""
    torch.manual_seed(0)
    m = make("sacodec", teacher_dim=512, semantic_codebook_size=32).train()
    m.set_teacher_codebook(torch.randn(32, 512) * 1.1)
    wav = torch.randn(4, 1, 6400) * 0.1
    units = teacher_for(m, wav).units
    feats = m.bottleneck.teacher_codebook.centroids[units].repeat_interleave(m.config.semantic_stride, 1)
    t = TeacherBatch(features=feats + 0.3 * torch.randn_like(feats), units=units, feature_rate=50.0)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(150):
        out = m(wav, t)
        opt.zero_grad()
        out.losses["semantic/anchor"].backward()
        opt.step()
    codes = m(wav, t).tokens.semantic[:, 0]
    assert float(out.extras["anchor/accuracy"]) > 0.9
    assert float((codes == units).float().mean()) > 0.9
    assert codes.unique().numel() >= 0.9 * units.unique().numel()
