"""Semantic mechanisms: STACodec's SPD head (teacher-free inference) and SecoustiCodec's text alignment."""
import math

import pytest
import torch

from codec.config import CodecConfig
from codec.model import DualStreamCodec, TeacherBatch
from codec.text_encoder import TextTokenizer, train_text_tokenizer

SR = 16000


def tone_batch(hop: int, n_units: int, frames: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio whose every semantic frame is one of ``n_units`` tones; the tone index is the 'teacher unit'."""
    g = torch.Generator().manual_seed(seed)
    units = torch.randint(0, n_units, (batch, frames), generator=g)
    freqs = 200.0 + 150.0 * units.float()  # [B, Ts]
    t = torch.arange(hop) / SR
    wav = torch.sin(2 * math.pi * freqs[..., None] * t).reshape(batch, 1, frames * hop) * 0.5
    return wav, units


def test_spd_predicts_teacher_units_without_teacher():
    cfg = CodecConfig.tiny("stacodec")
    cfg.semantic_codebook_size = cfg.acoustic_codebook_size = 8
    m = DualStreamCodec(cfg)
    wav, units = tone_batch(m.semantic_hop, 8, 12, 4)
    teacher = TeacherBatch(units=units)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    for _ in range(60):
        out = m(wav, teacher)
        assert torch.equal(out.tokens.semantic[:, 0], units)  # STA: layer 1 is the teacher label
        opt.zero_grad()
        out.losses["semantic/spd_ce"].backward()
        opt.step()
    m.eval()
    codes = m.encode(wav).semantic[:, 0]  # no teacher: layer 1 from the SPD head
    assert (codes == units).float().mean() > 0.9


def test_sta_codebook_follows_assigned_frames():
    cfg = CodecConfig.tiny("stacodec")
    m = DualStreamCodec(cfg).train()
    wav = torch.randn(2, 1, 6400) * 0.1
    units = torch.zeros(2, 5, dtype=torch.long)  # every frame assigned code 0
    m(wav, TeacherBatch(units=units))
    h = m.encoder(m._prepare(wav, None)[0]).low  # [B, D, Ts]
    first = m.bottleneck.rvq.layers[0]
    assert torch.allclose(first.embed[0], h.detach().mean((0, 2)), atol=1e-4)  # initialised from its frames


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    sentences = ["the cat sat on the mat", "a dog ran in the park", "speech codecs turn sound into tokens",
                 "hello world", "the quick brown fox jumps over the lazy dog"] * 4
    return train_text_tokenizer(sentences, tmp_path_factory.mktemp("sp") / "sp.model", vocab_size=40)


def test_text_alignment_loss(tokenizer_path, tmp_path):
    tok = TextTokenizer(tokenizer_path)
    assert 0 < tok.vocab_size <= 40
    m = DualStreamCodec(CodecConfig.tiny("secousticodec"))
    wav = torch.randn(2, 1, 6400) * 0.1
    with pytest.raises(ValueError, match="tokenizer"):
        m(wav, text=["hello world", "the cat"])
    m.set_text_tokenizer(tokenizer_path)
    out = m(wav, text=["hello world", "the cat sat on the mat"])
    assert "align/contrastive" in out.losses and torch.isfinite(out.losses["align/contrastive"])
    assert "align/contrastive" not in m(wav).losses
    with pytest.raises(ValueError, match="texts for a batch"):
        m(wav, text=["only one"])
    # the alignment loss trains the semantic latents and the text encoder
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    text = ["hello world", "the cat sat on the mat"]
    first = float(m(wav, text=text).losses["align/contrastive"].detach())
    for _ in range(10):
        opt.zero_grad()
        m(wav, text=text).losses["align/contrastive"].backward()
        opt.step()
    assert float(m(wav, text=text).losses["align/contrastive"].detach()) < first
    m.save_pretrained(tmp_path / "c")
    m2 = DualStreamCodec.from_pretrained(tmp_path / "c")
    assert m2.bottleneck.tokenizer is not None and m2.bottleneck.tokenizer.vocab_size == tok.vocab_size
    with pytest.raises(ValueError, match="no text"):
        DualStreamCodec(CodecConfig.tiny("rvq"))(wav, text=["a", "b"])


def test_secousticodec_global_and_null_voice():
    m = DualStreamCodec(CodecConfig.tiny("secousticodec")).eval()
    wav = torch.randn(1, 1, 6400) * 0.1
    tok = m.encode(wav)
    assert tok.global_.shape == (1, m.config.global_dim) and tok.acoustic.shape[1] == 0
    tok.global_ = None  # decoding without a voice falls back to the learnt default embedding
    assert m.decode(tok).shape == (1, 1, 5 * m.semantic_hop)
