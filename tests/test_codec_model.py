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
    # A decaying rate: at a constant 3e-3 this tiny problem reaches full accuracy and then leaves it
    # again, at a step that depends on the thread count (float reduction order).
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 200)
    for _ in range(200):
        out = m(wav, t)
        opt.zero_grad()
        out.losses["semantic/anchor"].backward()
        opt.step()
        sched.step()
    codes = m(wav, t).tokens.semantic[:, 0]
    assert float(out.extras["anchor/accuracy"]) > 0.9
    assert float((codes == units).float().mean()) > 0.9
    assert codes.unique().numel() >= 0.9 * units.unique().numel()


def test_sacodec_units_alone_pull_a_drifting_projector_back():
    """Anchored on units without teacher features, the anchor loss must pull a projector that drifts
    off the codebook back with a force that grows with the distance, as the feature MSE does: the
    unit cross-entropy alone pulls with a bounded force, and a real run's reconstruction gradient
    through the straight-through anchor walked past it (anchor accuracy at chance)."""
    torch.manual_seed(0)
    m = make("sacodec", teacher_dim=64, semantic_codebook_size=16).train()
    wav = torch.randn(2, 1, 6400) * 0.1
    units = teacher_for(m, wav).units
    bias = m.bottleneck.projector[2].bias
    direction = torch.randn_like(bias)
    direction /= direction.norm()
    base = bias.detach().clone()

    def pull(distance: float) -> float:
        with torch.no_grad():
            bias.copy_(base + distance * direction)
        loss = m(wav, TeacherBatch(units=units)).losses["semantic/anchor"]
        (grad,) = torch.autograd.grad(loss, bias)
        return float(grad @ direction)  # > 0: gradient descent moves the bias back along -direction

    near, far = pull(10.0), pull(160.0)
    assert near > 0 and far > 3 * near, (near, far)


def test_spd_transformer_learns_units_from_content():
    """The SPD head is a transformer: with positions it could memorise one fixed batch, so it is
    trained on a few tone batches and must predict the units of a batch it never saw (chance 1/8)."""
    from tests.test_codec_model_semantic import tone_batch

    torch.manual_seed(0)
    m = make("stacodec", semantic_codebook_size=8, acoustic_codebook_size=8)
    assert isinstance(m.bottleneck.spd.layers[0], torch.nn.Module) and len(m.bottleneck.spd.layers) == 2
    held_wav, held_units = tone_batch(m.semantic_hop, 8, 12, 4, seed=7)
    m.eval()
    assert (m.encode(held_wav).semantic[:, 0] == held_units).float().mean() < 0.4
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    for i in range(60):
        wav, units = tone_batch(m.semantic_hop, 8, 12, 4, seed=100 + i % 6)
        loss = m(wav, TeacherBatch(units=units)).losses["semantic/spd_ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert (m.encode(held_wav).semantic[:, 0] == held_units).float().mean() > 0.9


def test_streaming_equals_offline_causal_stacodec():
    """A causal stacodec streams: the SPD attention looks back a bounded window with relative
    (rotary) positions, so chunked encoding gives the offline codes; future audio changes nothing."""
    m = make("stacodec", causal=True, spd_context=10).eval()  # SPD reach (2 x 10) > the convs' (12)
    wav = torch.randn(1, 1, 40000) * 0.1
    tok = m.encode(wav)
    st = list(m.stream_encode(iter(torch.split(wav, [3000, 1280, 77, 20000, 15643], -1))))
    assert torch.equal(torch.cat([s.semantic for s in st], -1), tok.semantic)
    assert torch.equal(torch.cat([s.acoustic for s in st], -1), tok.acoustic)
    changed = wav.clone()
    changed[..., 30000:] = torch.randn(1, 1, 10000)
    n = 30000 // m.semantic_hop
    assert torch.equal(m.encode(changed).semantic[..., :n], tok.semantic[..., :n])
    c = m.config.spd_context
    mask = m.bottleneck.spd.attention_mask(c + 3, None, torch.device("cpu"))[0, 0]
    assert mask.tril().equal(mask) and not mask[c + 2, 1] and mask[c + 2, 2] and mask[c + 2, c + 2]
    # The head on a window that starts later gives the offline logits once past its reach (relative
    # positions, bounded look-back), and the streamer's recomputed context covers that reach.
    from codec.streaming import encoder_context_tokens

    reach = m.config.spd_layers * c
    h = torch.randn(1, m.config.dim, 3 * reach)
    full, win = m.bottleneck.spd(h), m.bottleneck.spd(h[..., 7:])
    assert torch.allclose(win[..., reach:], full[..., 7 + reach :], atol=1e-5)
    assert not torch.allclose(win[..., :reach], full[..., 7 : 7 + reach], atol=1e-3)
    assert encoder_context_tokens(m) > reach


def test_spd_config_and_old_checkpoint_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    with pytest.raises(ValueError, match="spd_heads"):
        CodecConfig(variant="stacodec", spd_dim=250, spd_heads=4)
    with pytest.raises(ValueError, match="spd_context"):
        CodecConfig(variant="stacodec", causal=True, spd_context=0)
    CodecConfig(variant="rvq", spd_dim=250)  # only the stacodec path reads the SPD fields
    m = make("stacodec")
    m.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("bottleneck.spd.")}
    state["bottleneck.spd.blocks.0.dw.weight"] = torch.zeros(32, 1, 7)  # the former conv head
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format_version": "1"})
    with pytest.raises(ValueError, match="former convolutional SPD head"):
        DualStreamCodec.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="former convolutional SPD head"):  # e.g. a trainer's resume
        make("stacodec").load_state_dict(state)


@pytest.mark.parametrize("variant", ["sac", "sacodec"])
def test_acoustic_dropout_decodes_dropped_items_from_the_semantic_stream(variant):
    """In training, acoustic dropout decodes some items from their semantic stream alone: each item's
    reconstruction equals either the training pass without dropout or decode(tokens, semantic_only=True),
    and both kinds occur. In eval mode it is off."""
    torch.manual_seed(0)
    m = make(variant, acoustic_dropout=0.5)
    wav = torch.randn(8, 1, 6400) * 0.1
    t = teacher_for(m, wav)
    m.train()
    m.bottleneck.vq.eval()  # a training-mode quantiser updates its codebook (EMA) at each pass
    with torch.no_grad():
        torch.manual_seed(1)  # a draw that keeps some items and drops others
        out = m(wav, t)
        m.config.acoustic_dropout = 0.0
        full = m(wav, t).wav_hat
        m.config.acoustic_dropout = 0.5
        m.eval()
        sem = m.decode(out.tokens, semantic_only=True)[..., : full.shape[-1]]
        assert not torch.allclose(full, sem, atol=1e-4)
        kinds = ["full" if torch.allclose(out.wav_hat[i], full[i], atol=1e-5) else
                 "semantic" if torch.allclose(out.wav_hat[i], sem[i], atol=1e-5) else "neither" for i in range(8)]
        assert set(kinds) == {"full", "semantic"}, kinds
        assert torch.allclose(m(wav, t).wav_hat, m.decode(out.tokens)[..., : full.shape[-1]], atol=1e-4)


def test_acoustic_dropout_config_errors():
    with pytest.raises(ValueError, match="acoustic_dropout must lie"):
        CodecConfig.tiny("sacodec").__class__(variant="sacodec", acoustic_dropout=1.0)
    with pytest.raises(ValueError, match="two-stream variants"):
        CodecConfig(variant="stacodec", acoustic_dropout=0.3)
    m = make("stacodec")
    wav = torch.randn(1, 1, 6400) * 0.1
    with pytest.raises(ValueError, match="semantic_only decoding needs a two-stream variant"):
        m.decode(m.encode(wav, teacher_for(m, wav)) if m.needs_teacher_codebook else m.encode(wav), semantic_only=True)
