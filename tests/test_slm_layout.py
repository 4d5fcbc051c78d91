"""Token layout and task templates: ids, save/load, round trips, loss masks."""
import pytest
import torch

from slm.layout import TokenLayout
from slm.templates import IGNORE, asr_example, continuation_example, parse, tts_example, tts_prompt
from tests.test_slm_helpers import tiny_backbone_dir


@pytest.fixture(scope="module")
def tok_layout():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone_dir())
    layout = TokenLayout.for_tokenizer(tok, 16)
    layout.extend_tokenizer(tok)
    return tok, layout


def test_layout_ids_and_save_load(tmp_path, tok_layout):
    tok, layout = tok_layout
    assert layout.vocab_size == len(tok) == 300 + 16 + 6  # 5 required specials + <|interleave|>
    old = TokenLayout(300, 16)  # a layout saved before <|interleave|> existed: still valid, one id shorter
    assert old.vocab_size == 321 and old.audio_end == layout.audio_end and "<|interleave|>" not in old.specials
    codes = torch.tensor([0, 5, 15])
    ids = layout.codes_to_ids(codes)
    assert ids.tolist() == [300, 305, 315]
    assert tok.convert_ids_to_tokens(ids.tolist()) == ["<|s_0|>", "<|s_5|>", "<|s_15|>"]
    assert torch.equal(layout.ids_to_codes(ids), codes)
    layout.save(tmp_path)
    again = TokenLayout.load(tmp_path)
    assert again == layout and again.audio_end == layout.audio_end


def test_layout_rejects_bad_codes(tok_layout):
    _, layout = tok_layout
    with pytest.raises(ValueError, match="0..15"):
        layout.codes_to_ids(torch.tensor([16]))
    with pytest.raises(ValueError, match="not semantic"):
        layout.ids_to_codes(torch.tensor([5]))
    with pytest.raises(TypeError):
        layout.codes_to_ids(torch.tensor([1.0]))


def test_masks_partition_vocab(tok_layout):
    _, layout = tok_layout
    a, t = layout.audio_mask(), layout.text_mask()
    assert not (a & t).any()
    assert a.sum() == 17 and t.sum() == 300


@pytest.mark.parametrize("task", ["tts", "asr", "continue"])
def test_template_round_trip_and_labels(tok_layout, task):
    tok, layout = tok_layout
    codes = torch.tensor([3, 1, 4, 1, 5, 9])
    text = "the cat sat on the mat."
    if task == "tts":
        ex = tts_example(tok, layout, text, codes)
    elif task == "asr":
        ex = asr_example(tok, layout, codes, text)
    else:
        ex = continuation_example(layout, codes)
    p = parse(ex.input_ids, layout, tok)
    assert p.task == task and torch.equal(p.codes, codes)
    assert p.text == (text if task != "continue" else "")
    learned = ex.labels != IGNORE
    sem = layout.is_semantic(ex.input_ids)
    if task == "tts":  # loss on the audio span + <|audio_end|> only
        assert torch.equal(learned, sem | (ex.input_ids == layout.audio_end))
    elif task == "asr":  # loss on the transcript + eos only
        assert not (learned & sem).any() and ex.input_ids[learned][-1] == tok.eos_token_id
    else:
        assert learned.sum() == len(codes) - 1
    assert torch.equal(ex.input_ids[ex.semantic_pos], layout.codes_to_ids(codes))


def test_tts_prompt_with_voice_prompt(tok_layout):
    tok, layout = tok_layout
    p = tts_prompt(tok, layout, "hello world", "good morning", torch.tensor([1, 2]))
    assert p[-2:].tolist() == layout.codes_to_ids(torch.tensor([1, 2])).tolist()
    assert (p == layout.audio_start).sum() == 1


def test_templates_reject_empty_text(tok_layout):
    tok, layout = tok_layout
    with pytest.raises(ValueError, match="non-empty"):
        tts_example(tok, layout, "  ", torch.tensor([1]))
    with pytest.raises(ValueError, match="task token"):
        parse(torch.tensor([5, 6]), layout, tok)
