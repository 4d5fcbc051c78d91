"""Demo building blocks: input limits, audio conversion, codec discovery/caching/reconstruction,
the app's named endpoints and the `slm demo` command line (no server, no browser)."""
import json

import gradio as gr
import numpy as np
import pytest
import soundfile as sf
import torch

from demos.app import build_app, user_errors
from demos.codec_lab import CodecCache, acoustic_options, find_codecs, reconstruct
from demos.limits import DemoLimits, InputError, check_text, load_audio_input, to_gradio_audio
from tests._tiny_pipeline import speechlike_wav, tiny_codec_root


def test_text_limits():
    lim = DemoLimits(max_text_chars=10)
    assert check_text("  hello  ", lim) == "hello"
    with pytest.raises(InputError, match="empty"):
        check_text("   ", lim)
    with pytest.raises(InputError, match="at most 10 characters, got 11"):
        check_text("x" * 11, lim)


def test_audio_input_resamples_and_checks_limits(tmp_path):
    lim = DemoLimits(max_audio_seconds=2.0, max_upload_mb=1.0)
    wav = load_audio_input(speechlike_wav(tmp_path / "a.wav", 1.5, 22050), lim, 16000)
    assert wav.shape == (1, 24000) and wav.dtype == torch.float32
    stereo = np.stack([np.full(8000, 0.5, np.float32), np.zeros(8000, np.float32)], 1)
    assert torch.allclose(load_audio_input((8000, stereo), lim, 8000), torch.full((1, 8000), 0.25))
    with pytest.raises(InputError, match="limit is 2 s"):
        load_audio_input(speechlike_wav(tmp_path / "long.wav", 2.5), lim, 16000)
    with pytest.raises(InputError, match="silent"):
        load_audio_input((16000, np.zeros(16000, np.int16)), lim, 16000)
    with pytest.raises(InputError, match="record or upload"):
        load_audio_input(None, lim, 16000)
    big = tmp_path / "big.wav"
    sf.write(big, np.random.default_rng(0).uniform(-0.5, 0.5, 48000 * 8).astype(np.float32), 48000,
             subtype="FLOAT")
    with pytest.raises(InputError, match=r"file is 1\.5 MB, the limit is 1 MB"):
        load_audio_input(str(big), lim, 16000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(InputError, match="not a supported audio format"):
        load_audio_input(str(junk), lim, 16000)


def test_gradio_audio_is_int16_and_clipped():
    sr, a = to_gradio_audio(torch.tensor([[0.0, 0.5, 2.0, -2.0]]), 16000)
    assert sr == 16000 and a.dtype == np.int16 and a.tolist() == [0, 16383, 32767, -32767]


def test_user_errors_become_gr_errors():
    @user_errors
    def bad():
        raise InputError("too long")

    @user_errors
    def gen():
        yield 1
        raise ValueError("broken")

    with pytest.raises(gr.Error, match="too long"):
        bad()
    it = gen()
    assert next(it) == 1
    with pytest.raises(gr.Error, match="broken"):
        next(it)


def test_find_codecs_skips_non_codec_dirs(tmp_path):
    root = tiny_codec_root()
    hf = tmp_path / "codec" / "not-a-codec"  # HF model dirs hold config.json + safetensors too
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (hf / "model.safetensors").write_bytes(b"")
    found = {**find_codecs([root]), **find_codecs([tmp_path / "codec", tmp_path / "missing"])}
    assert set(found) == {"codec/sacodec", "codec/stacodec"}
    assert found["codec/stacodec"].variant == "stacodec" and found["codec/stacodec"].bitrate > 0


def test_codec_cache_loads_once_and_reconstructs_to_input_length():
    calls = []

    def loader(path):
        from codec.model import DualStreamCodec

        calls.append(path)
        return DualStreamCodec.from_pretrained(path).eval()

    cache = CodecCache(find_codecs([tiny_codec_root()]), loader=loader)
    assert cache.labels() == ["codec/sacodec", "codec/stacodec"]
    assert any("stacodec" in text and "bps" in text for text, _ in cache.choices())
    codec = cache.get("codec/stacodec")
    assert cache.get("codec/stacodec") is codec and len(calls) == 1
    with pytest.raises(ValueError, match="unknown codec"):
        cache.get("codec/nope")
    wav = torch.randn(1, 5000) * 0.1
    rec = reconstruct(codec, wav, encode=lambda x: cache.encode("codec/stacodec", codec, x))
    assert rec.audio.shape == wav.shape and torch.isfinite(rec.audio).all()
    assert rec.n_acoustic == codec.n_acoustic_codebooks and rec.bitrate == pytest.approx(codec.bitrate)
    # this codec decodes only full acoustic stacks, so the lab offers no lower bitrate
    assert acoustic_options(codec) == [codec.n_acoustic_codebooks]


def test_app_exposes_named_endpoints_and_queue():
    app = build_app(lambda: None, codec_dirs=[tiny_codec_root()], limits=DemoLimits(concurrency=2, queue_size=5))
    names = {d.api_name for d in app.fns.values() if d.api_name}
    assert {"tts", "asr", "continue", "codec", "dialogue", "voices"} <= names
    assert app._queue.max_size == 5  # refuses the 6th waiting request
    assert app._queue.default_concurrency_limit == 2
    heavy = [d for d in app.fns.values() if d.api_name in ("tts", "asr", "continue", "codec", "dialogue")]
    assert len(heavy) == 5 and {d.concurrency_id for d in heavy} == {"models"}  # one CPU budget for all
    codec_only = build_app(None, codec_dirs=[tiny_codec_root()])
    assert "tts" not in {d.api_name for d in codec_only.fns.values()}


def test_sampling_sliders_start_at_the_models_own_settings(tmp_path):
    from slm.pipeline import model_sampling

    (tmp_path / "slm_config.json").write_text(json.dumps({"sampling": {"temperature": 0.3, "top_k": 20}}))
    sp = model_sampling(tmp_path)
    assert (sp.temperature, sp.top_k, sp.top_p) == (0.3, 20, 0.95)  # unset fields keep Sampling's defaults
    with pytest.raises(FileNotFoundError, match="slm_config.json"):
        model_sampling(tmp_path / "nothing")

    def sliders(app):
        return {b.label: b.value for b in app.blocks.values() if isinstance(b, gr.Slider)
                and b.label in ("Temperature", "Top-k", "Top-p")}

    app = build_app(lambda: None, codec_dirs=[tiny_codec_root()], sampling=sp)
    assert sliders(app) == {"Temperature": 0.3, "Top-k": 20, "Top-p": 0.95}
    assert sliders(build_app(lambda: None, codec_dirs=[tiny_codec_root()])) == {
        "Temperature": 0.8, "Top-k": 50, "Top-p": 0.95}


def test_cli_registers_demo_with_localhost_default():
    from slm.cli import build_parser

    args = build_parser().parse_args(["demo", "--port", "0", "--codec-only"])
    assert args.host == "127.0.0.1" and not args.share and args.codec_only and args.func.__name__ == "run"
    assert build_parser().parse_args(["demo", "--host", "0.0.0.0", "--share"]).share


def test_tts_word_slider_is_left_out_where_it_has_nothing_to_choose():
    """The "choose every N words" slider only acts with candidates above 1 in the aligned form; elsewhere the demo
    leaves it out rather than pass the pipeline a setting it refuses."""
    from slm.pipeline import SpeechPipeline
    from tests._tiny_pipeline import tiny_pipeline_dir

    pipe = SpeechPipeline.from_pretrained(tiny_pipeline_dir())
    app = build_app(lambda: pipe, codec_dirs=[tiny_codec_root()])
    on_tts = next(d.fn for d in app.fns.values() if d.api_name == "tts")
    for form, candidates in (("plain", 1), ("aligned", 1), ("model default", 1)):  # (the tiny model has no reader)
        outs = list(on_tts("hello there", None, None, 0.8, 50, 0.95, 0, 0.5, form, candidates, 2))
        assert outs, (form, candidates)
    with pytest.raises(ValueError, match="best_of_words=2 chooses among best_of candidates"):
        pipe.tts("hello there", best_of_words=2, max_seconds=0.5)
