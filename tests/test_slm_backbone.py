"""Backbone loading from a local dir, vocabulary extension, LoRA adapter size, configs, CLI."""
import json
from pathlib import Path

import pytest
import torch

from adapters.backbones import extend_vocabulary, load_backbone
from adapters.lora import LoraSettings, apply_lora, trainable_parameters
from slm.layout import TokenLayout
from tests.test_slm_helpers import tiny_backbone_dir


def test_extend_vocabulary_mean_rows_and_tied():
    bb = load_backbone(tiny_backbone_dir())
    emb = bb.model.get_input_embeddings().weight
    mean = emb.detach().mean(0)
    layout = TokenLayout.for_tokenizer(bb.tokenizer, 16)
    extend_vocabulary(bb.model, bb.tokenizer, layout)
    w = bb.model.get_input_embeddings().weight
    assert w.shape[0] == layout.vocab_size == len(bb.tokenizer)
    torch.testing.assert_close(w[layout.base_vocab:], mean.expand(16 + len(layout.specials), -1))
    assert bb.model.get_output_embeddings().weight is w  # still tied
    layout.check_tokenizer(bb.tokenizer)
    # extending again is a no-op, and deterministic across loads
    extend_vocabulary(bb.model, bb.tokenizer, layout)
    bb2 = load_backbone(tiny_backbone_dir())
    extend_vocabulary(bb2.model, bb2.tokenizer, layout)
    assert torch.equal(bb2.model.get_input_embeddings().weight, w)


def test_lora_trains_only_adapter_and_new_rows():
    bb = load_backbone(tiny_backbone_dir())
    layout = TokenLayout.for_tokenizer(bb.tokenizer, 16)
    extend_vocabulary(bb.model, bb.tokenizer, layout)
    lm = apply_lora(bb.model, LoraSettings(r=2, alpha=4), layout.new_ids())
    names = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in names) and any("trainable_tokens_delta" in n for n in names)
    assert not any(n.endswith("embed_tokens.weight") for n in names)
    train, total = trainable_parameters(lm)
    assert train < 0.5 * total


def test_lora_rejects_missing_modules():
    bb = load_backbone(tiny_backbone_dir())
    with pytest.raises(ValueError, match="c_attn"):
        apply_lora(bb.model, LoraSettings(target_modules=("c_attn",)))


def test_bad_backbone_spec():
    with pytest.raises(ValueError, match="hub id"):
        load_backbone("")


def test_shipped_configs_parse():
    from slm.train import TrainConfig

    files = sorted(Path(__file__).resolve().parent.parent.glob("configs/lm/*.yaml"))
    assert files
    for f in files:
        TrainConfig.from_yaml(f)


def test_cli_tts_and_asr(tmp_path):
    from slm.cli import main
    from slm.train import train
    from tests.test_slm_helpers import tiny_train_config

    final = train(tiny_train_config(tmp_path, steps=1), progress=False)
    out = tmp_path / "o.wav"
    assert main(["--threads", "1", "tts", "hello world", "--model", str(final), "--out", str(out),
                 "--seed", "0", "--max-seconds", "1"]) == 0
    assert out.exists() and out.stat().st_size > 44
    # the aligned form on request (the same seed and text; a different way of generating, so other audio)
    al = tmp_path / "a.wav"
    assert main(["--threads", "1", "tts", "hello world", "--model", str(final), "--out", str(al), "--seed", "0",
                 "--max-seconds", "1", "--aligned"]) == 0
    assert al.exists() and al.read_bytes() != out.read_bytes()
    # word timings as subtitles or JSON, the same audio
    for name in ("t.srt", "t.json"):
        assert main(["--threads", "1", "tts", "hello world", "--model", str(final), "--out", str(tmp_path / "b.wav"),
                     "--seed", "0", "--max-seconds", "1", "--aligned", "--timings", str(tmp_path / name)]) == 0
        assert (tmp_path / "b.wav").read_bytes() == al.read_bytes()
    srt = (tmp_path / "t.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0") and "hello world" in srt
    js = json.loads((tmp_path / "t.json").read_text())
    assert [w["text"] for w in js] == ["hello", "world"] and js[0]["start"] == 0.0 < js[0]["end"] == js[1]["start"]
    with pytest.raises(SystemExit):
        main(["tts", "hello", "--model", str(final), "--out", str(al), "--aligned", "--plain"])
    assert main(["--threads", "1", "asr", str(out), "--model", str(final)]) == 0
    assert main(["--threads", "1", "asr", str(out), "--model", str(final), "--int8"]) == 0
    cont = tmp_path / "c.wav"
    assert main(["--threads", "1", "continue", str(out), "--model", str(final), "--seconds", "0.5",
                 "--out", str(cont)]) == 0
    assert cont.exists()


def test_kv_cache_is_passed_and_read_under_the_backbones_own_name():
    """transformers renamed the forward's `past_key_values` to `cache` (the old name warns until it is
    removed): generation passes and reads the cache under whichever name the backbone takes, so the
    tiny pipeline's TTS and its LM's ASR raise no deprecation warning; older releases keep the old name."""
    import inspect
    import warnings

    from adapters.backbones import cache_kw, out_cache
    from tests._tiny_pipeline import tiny_pipeline

    pipe = tiny_pipeline()
    takes = "cache" if "cache" in inspect.signature(type(pipe.lm.get_base_model()).forward).parameters else \
        "past_key_values"
    assert cache_kw(pipe.lm) == cache_kw(pipe.lm.get_decoder()) == takes

    class Old(torch.nn.Module):  # a release before the rename
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return {"past_key_values": past_key_values}

    assert cache_kw(Old()) == "past_key_values" and out_cache(Old()(**{cache_kw(Old()): 7})) == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipe.tts("hello there", seed=0)
        pipe.asr(pipe.tts("hi", seed=1), pipe.codec.sample_rate, method="lm")
