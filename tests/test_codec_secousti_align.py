"""SecoustiCodec's frame-level speech-text alignment with word timings (and the even-spread fallback)."""
import math

import pytest
import torch
import torch.nn.functional as F

from codec.config import CodecConfig
from codec.model import DualStreamCodec
from codec.modules.secousti import frame_info_nce, info_nce
from codec.text_encoder import TimedText, train_text_tokenizer, word_frame_index
from codec.train.batches import StepBatches, crop_words, snap_word_ends

SR = 16000
WORDS = ["low", "mid", "high", "hello", "world"]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    sentences = ["low mid high", "hello world", "high low mid hello", "world hello low", "mid mid high world"] * 4
    return train_text_tokenizer(sentences, tmp_path_factory.mktemp("sp") / "sp.model", vocab_size=40)


@pytest.fixture()
def model(tokenizer_path):
    m = DualStreamCodec(CodecConfig.tiny("secousticodec"))
    m.set_text_tokenizer(tokenizer_path)
    return m


def frame_s(m) -> float:
    return m.semantic_hop / SR


def test_word_frame_index_uses_frame_centres():
    words = [(0.0, 0.16, "a"), (0.24, 0.40, "b")]  # frames of 80 ms: centres 0.04, 0.12, 0.20, ...
    assert word_frame_index(words, 6, 0.08).tolist() == [0, 0, -1, 1, 1, -1]
    with pytest.raises(ValueError, match="start <= end"):
        TimedText(((0.3, 0.1, "x"),))


def test_crop_words_relative_times_and_espeak_snap():
    # espeak marks stop before each word's last phone ("n" of "one"); the snap extends them
    row = {"text": "one thousand", "words": [[0.05, 0.15, "one"], [0.30, 0.70, "thousand"]],
           "phones": [[0.0, 0.05, "sil"], [0.05, 0.15, "w"], [0.15, 0.30, "n"], [0.30, 0.70, "th"],
                      [0.70, 0.90, "sil"]]}
    assert snap_word_ends(row["words"], row["phones"]) == [(0.05, 0.30, "one"), (0.30, 0.70, "thousand")]
    t = crop_words(row, 0.2, 0.4)  # crop [0.2, 0.6): both words cut at the crop edges
    assert [w for _, _, w in t.words] == ["one", "thousand"] and t.text == "one thousand"
    assert [(round(a, 6), round(b, 6)) for a, b, _ in t.words] == [(0.0, 0.1), (0.1, 0.4)]
    assert crop_words(row, 0.75, 0.2).words == ()  # a crop in the trailing silence has no words
    old = {"text": "no word times here", "words": []}  # old espeak rows: even-spread fallback
    assert crop_words(old, 0.0, 1.0) == "no word times here"
    rows = [dict(row, id="a", path="a.wav"), dict(old, id="b", path="b.wav"), dict(old, id="c", path="c.wav")]
    assert StepBatches(rows, SR, 1280, 1280, 1).untimed_rows == 2


def test_timed_targets_map_frames_to_their_words(model):
    fs = frame_s(model)  # 0.08 s at 12.5 Hz
    words = ((0.0, 2 * fs, "hello"), (3 * fs, 5 * fs, "world"), (5 * fs, 5.4 * fs, "low"))
    seqs, timing = model.bottleneck.align_targets([TimedText(words), "hello world"], ts=7)
    piece_word, frame_word = timing[0]
    # "low" (32 ms) holds no frame centre: its state is a text row with no frame of its own
    assert frame_word.tolist() == [0, 0, -1, 1, 1, -1, -1]
    sp = model.bottleneck.tokenizer.sp
    for k, (_, _, w) in enumerate(words):  # the pieces of word k spell word k
        assert sp.decode([i for i, j in zip(seqs[0], piece_word.tolist()) if j == k]) == w
    assert timing[1] is None and seqs[1] == sp.encode("hello world")


def test_silence_frames_get_no_alignment_gradient(model):
    fs = frame_s(model)
    text = [TimedText(((0.0, 2 * fs, "hello"), (4 * fs, 6 * fs, "world"))),
            TimedText(((1 * fs, 3 * fs, "low"), (3 * fs, 6 * fs, "high")))]
    mu = torch.randn(2, model.config.vae_dim, 8, requires_grad=True)
    loss, stats = model.bottleneck.align_loss(mu, text)
    loss.backward()
    used = mu.grad.abs().sum(1) > 0  # [B, Ts]
    assert used.tolist() == [[True, True, False, False, True, True, False, False],
                             [False, True, True, True, True, True, False, False]]
    assert float(stats["align/timed_items"]) == 1.0 and float(stats["align/frames_used"]) == pytest.approx(9 / 16)
    silent = [TimedText(()), TimedText(())]  # crops without words: a zero term, still differentiable
    loss, _ = model.bottleneck.align_loss(mu, silent)
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_frame_info_nce_reduces_to_info_nce():
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    assert torch.allclose(frame_info_nce(a, b, torch.arange(6), 0.1), info_nce(a, b, 0.1), atol=1e-6)
    # a word owning two frames, perfectly aligned: one row with two positives costs far less than
    # pairing each frame with its own copy of the row (the copies are false negatives of each other)
    rows = torch.eye(3)
    frames = torch.stack([rows[0], rows[0], rows[1], rows[2]])
    multi = float(frame_info_nce(frames, rows, torch.tensor([0, 0, 1, 2]), 0.1))
    assert multi < 0.5 * float(info_nce(frames, frames, 0.1))


def test_even_spread_fallback_is_the_previous_loss(model):
    bn = model.bottleneck
    mu = torch.randn(2, model.config.vae_dim, 5)
    text = ["hello world", "low mid high"]
    loss, stats = bn.align_loss(mu, text)
    ids, mask = bn.tokenizer(text)  # the loss as it was before word timings: interpolate, pair, InfoNCE
    states = bn.text_proj(bn.text_encoder(ids, mask))
    spread = [F.interpolate(states[i : i + 1, : int(mask[i].sum())].transpose(1, 2), size=5, mode="linear",
                            align_corners=False)[0].t() for i in range(2)]
    want = info_nce(bn.speech_proj(mu.transpose(1, 2)).flatten(0, 1), torch.cat(spread), bn.cfg.align_temperature)
    assert torch.allclose(loss, want, atol=1e-5) and float(stats["align/timed_items"]) == 0.0
    fs = frame_s(model)  # a batch mixing both kinds
    loss, stats = bn.align_loss(mu, ["hello world", TimedText(((0.0, 2 * fs, "low"),))])
    assert torch.isfinite(loss) and float(stats["align/timed_items"]) == 0.5
    with pytest.raises(TypeError, match="str or TimedText"):
        bn.align_loss(mu, ["hello", 3])


def word_tone_batch(hop: int, batch: int, n_words: int, seed: int = 0) -> tuple[torch.Tensor, list[TimedText]]:
    """Each item: ``n_words`` words, each two semantic frames of the word's own tone, a silent frame
    between words; word times as TimedText (what the synthesiser manifests give)."""
    g = torch.Generator().manual_seed(seed)
    wavs, texts = [], []
    fs = hop / SR
    for _ in range(batch):
        picks = torch.randint(0, 3, (n_words,), generator=g).tolist()
        parts, words, t = [], [], 0.0
        for k in picks:
            n = torch.arange(2 * hop) / SR
            parts += [0.5 * torch.sin(2 * math.pi * (200 + 250 * k) * n), torch.zeros(hop)]
            words.append((t, t + 2 * fs, WORDS[k]))
            t += 3 * fs
        wavs.append(torch.cat(parts))
        texts.append(TimedText(tuple(words)))
    return torch.stack(wavs)[:, None], texts


def test_word_timed_alignment_trains(model):
    wav, text = word_tone_batch(model.semantic_hop, 4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = float(model(wav, text=text).losses["align/contrastive"].detach())
    for _ in range(25):
        opt.zero_grad()
        model(wav, text=text).losses["align/contrastive"].backward()
        opt.step()
    assert float(model(wav, text=text).losses["align/contrastive"].detach()) < 0.7 * first
