"""Per-item lengths of a zero-padded batch: ``encode(wav, lengths=...)`` fills ``CodecTokens.lengths``
(semantic frames), ``decode`` zeroes each item past its length."""
import math

import pytest
import torch

from codec.config import VARIANTS, CodecConfig
from codec.contracts import CodecTokens
from codec.model import DualStreamCodec, TeacherBatch
from codec.modules.bottlenecks import SPDHead
from codec.streaming import encoder_context_tokens

SIZES = (5000, 2600, 7100)  # samples; not multiples of the semantic hop (1280 in the tiny configs)


def make(variant: str, causal: bool) -> DualStreamCodec:
    cfg = CodecConfig.tiny(variant)
    cfg.causal = causal
    torch.manual_seed(0)
    m = DualStreamCodec(cfg).eval()
    if m.needs_teacher_codebook:
        m.set_teacher_codebook(torch.randn(cfg.semantic_codebook_size, cfg.teacher_dim))
    return m


def padded_batch(m: DualStreamCodec):
    g = torch.Generator().manual_seed(1)
    items = [torch.randn(1, 1, n, generator=g) * 0.1 for n in SIZES]
    wav = torch.zeros(len(items), 1, max(SIZES))
    for i, x in enumerate(items):
        wav[i, :, : x.shape[-1]] = x
    ts = math.ceil(max(SIZES) / m.semantic_hop)
    units = torch.randint(0, m.semantic_codebook_size, (len(items), ts), generator=g)
    return items, wav, units


def teacher(m: DualStreamCodec, units: torch.Tensor) -> TeacherBatch | None:
    return TeacherBatch(units=units) if m.needs_teacher_at_encode else None


def item_alone(m: DualStreamCodec, x: torch.Tensor, units_row: torch.Tensor) -> CodecTokens:
    ts = math.ceil(x.shape[-1] / m.semantic_hop)
    return m.encode(x, teacher(m, units_row[None, :ts]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_padded_batch_equals_items_alone(variant):
    """Causal: every item of the padded batch gets exactly the codes (and audio) it gets alone."""
    m = make(variant, causal=True)
    items, wav, units = padded_batch(m)
    tok = m.encode(wav, teacher(m, units), lengths=torch.tensor(SIZES))
    frames = [math.ceil(n / m.semantic_hop) for n in SIZES]
    assert tok.lengths.tolist() == frames and tok.lengths.dtype == torch.long
    r = tok.ratio
    y = m.decode(tok)
    assert y.shape == (3, 1, max(frames) * m.semantic_hop)
    for i, (x, f) in enumerate(zip(items, frames)):
        alone = item_alone(m, x, units[i])
        assert alone.lengths.tolist() == [f]  # encode without lengths: every frame valid
        assert torch.equal(tok.semantic[i : i + 1, :, :f], alone.semantic)
        assert torch.equal(tok.acoustic[i : i + 1, :, : f * r], alone.acoustic)
        if alone.global_ is not None:  # secousticodec: the voice pooled from the item's own frames
            assert torch.allclose(tok.global_[i : i + 1], alone.global_, atol=1e-5)
        one = tok[i]  # trimmed to its length
        assert one.semantic.shape[-1] == f and torch.equal(one.semantic, alone.semantic)
        ya = m.decode(alone)
        assert torch.allclose(y[i : i + 1, :, : f * m.semantic_hop], ya, atol=1e-5)
        assert not y[i, :, f * m.semantic_hop :].any()


@pytest.mark.parametrize("variant", VARIANTS)
def test_noncausal_lengths_and_decode_trim(variant):
    """Non-causal: lengths are right and decode output past an item's length is zero. The convs
    see the padding near an item's end, so codes there may differ from the item alone; frames
    further from the end than the encoder's receptive field match exactly (conv-only variants)."""
    m = make(variant, causal=False)
    _, wav, units = padded_batch(m)
    tok = m.encode(wav, teacher(m, units), lengths=SIZES)  # a plain list works too
    frames = [math.ceil(n / m.semantic_hop) for n in SIZES]
    assert tok.lengths.tolist() == frames
    y = m.decode(tok)
    assert y.shape[-1] == max(frames) * m.semantic_hop
    for i, f in enumerate(frames):
        assert not y[i, :, f * m.semantic_hop :].any()
        assert y[i, :, : f * m.semantic_hop].abs().sum() > 0
    full = m.decode(CodecTokens(tok.semantic, tok.acoustic, tok.global_))  # without lengths: untouched
    assert torch.allclose(full[2], y[2]) and full[1, :, frames[1] * m.semantic_hop :].abs().sum() > 0
    if variant in ("rvq", "distill", "sacodec"):  # a longer item, so some frames lie beyond the reach
        x = torch.randn(1, 1, 30000, generator=torch.Generator().manual_seed(2)) * 0.1
        wav2 = torch.cat([torch.nn.functional.pad(x, (0, 15000)), torch.randn(1, 1, 45000) * 0.1])
        tok2 = m.encode(wav2, lengths=[30000, 45000])
        alone = m.encode(x)
        keep = alone.semantic.shape[-1] - encoder_context_tokens(m)  # conservative receptive field
        assert keep >= 8 and tok2.lengths.tolist() == [alone.semantic.shape[-1], tok2.semantic.shape[-1]]
        assert torch.equal(tok2.semantic[:1, :, :keep], alone.semantic[..., :keep])
        assert torch.equal(tok2.acoustic[:1, :, : keep * tok2.ratio], alone.acoustic[..., : keep * tok2.ratio])


def test_spd_attention_ignores_padding():
    """Non-causal stacodec: the SPD head's attention hides the padded frames, so on the same
    features a padded item's logits equal the unpadded item's."""
    cfg = CodecConfig.tiny("stacodec")
    torch.manual_seed(0)
    head = SPDHead(cfg).eval()
    h = torch.randn(2, cfg.dim, 9)
    lengths = torch.tensor([9, 5])
    out = head(h, lengths)
    assert torch.allclose(out[1:, :, :5], head(h[1:, :, :5]), atol=1e-5)
    assert torch.allclose(out[:1], head(h[:1]), atol=1e-5)
    assert not torch.allclose(head(h)[1:, :, :5], head(h[1:, :, :5]), atol=1e-3)  # without it they differ


@pytest.mark.parametrize("lengths, match", [
    ([5000, 2600, 7200], "1..7100"),   # longer than the batch
    ([5000, -3, 7100], "1..7100"),     # negative
    ([5000, 0, 7100], "1..7100"),      # empty item
    ([5000, 2600], r"\[B\] = \[3\]"),  # one per item
    ([[5000, 2600, 7100]], r"\[B\] = \[3\]"),
    ([5000.5, 2600, 7100], "whole sample counts"),
])
def test_bad_lengths_raise(lengths, match):
    m = make("rvq", causal=False)
    _, wav, _ = padded_batch(m)
    with pytest.raises(ValueError, match=match):
        m.encode(wav, lengths=torch.tensor(lengths))


def test_token_lengths_contract(tmp_path):
    s, a = torch.zeros(2, 1, 4, dtype=torch.long), torch.zeros(2, 2, 4, dtype=torch.long)
    for bad, match in ((torch.tensor([5, 1]), "0..Ts = 0..4"), (torch.tensor([-1, 1]), "0..Ts"),
                       (torch.tensor([1, 2, 3]), r"\[B\] = \[2\]"), (torch.tensor([1.0, 2.0]), "integer")):
        with pytest.raises(ValueError, match=match):
            CodecTokens(s, a, lengths=bad)
    tok = CodecTokens(torch.randint(0, 9, (2, 1, 4)), torch.randint(0, 9, (2, 2, 4)), lengths=torch.tensor([4, 2]))
    tok.save(tmp_path / "t.safetensors")
    back = CodecTokens.load(tmp_path / "t.safetensors")
    assert torch.equal(back.lengths, tok.lengths) and back[1].semantic.shape == (1, 1, 2)
    assert torch.equal(back[1].acoustic, tok.acoustic[1:, :, :2])
