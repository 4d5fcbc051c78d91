"""The demo served on localhost with a tiny real pipeline, driven through `gradio_client` exactly as
the README shows: every named endpoint answers, and limits come back as readable errors."""
import os

import pytest
import soundfile as sf

from demos.app import build_app
from demos.limits import DemoLimits
from tests._tiny_pipeline import serve, speechlike_wav, tiny_codec_root, tiny_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    limits = DemoLimits(max_audio_seconds=4.0, max_text_chars=80, max_generate_seconds=3.0, asr_segment_seconds=1.5)
    app = build_app(tiny_pipeline, codec_dirs=[tiny_codec_root()], limits=limits)
    url = serve(app)
    yield Client(url, verbose=False)
    app.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from gradio_client import handle_file

    return handle_file(speechlike_wav(tmp_path_factory.mktemp("audio") / "clip.wav", 1.2))


def _seconds(path: str) -> float:
    info = sf.info(path)
    return info.frames / info.samplerate


def test_tts_returns_a_wav_and_timing(client):
    _, full, info = client.predict("hello world.", "spk0", None, 0.8, 20, 0.95, 0, 1.0, api_name="/tts")
    assert os.path.isfile(full) and 0 < _seconds(full) <= 1.0 + 1.0  # max_seconds + one decode chunk
    assert "real time" in info
    # the TTS form: the model's default (above, the tiny model's plain form) or one asked for
    _, plain, _ = client.predict("hello world.", "spk0", None, 0.8, 20, 0.95, 0, 1.0, "plain", api_name="/tts")
    _, aligned, info2 = client.predict("hello world.", "spk0", None, 0.8, 20, 0.95, 0, 1.0, "aligned", api_name="/tts")
    assert "When each is spoken (s): hello world. 0.00-" in info and "hello 0.00-" in info2 and "· world " in info2
    from pathlib import Path

    assert Path(plain).read_bytes() == Path(full).read_bytes() != Path(aligned).read_bytes()


def test_asr_returns_text_and_token_plot(client, clip):
    text, plot, info = client.predict(clip, api_name="/asr")
    assert isinstance(text, str) and text  # random weights: arbitrary words, but never empty
    assert plot and "semantic tokens" in info and "plain form" in info  # the tiny model's default
    # the aligned form streams words; its last message is the whole transcript, with the plot
    text2, plot2, info2 = client.predict(clip, "aligned", api_name="/asr")
    assert isinstance(text2, str) and text2 and plot2 and "aligned form" in info2
    assert client.predict(clip, "plain", api_name="/asr")[0] == text


def test_asr_splits_a_long_clip_at_its_pauses(client, tmp_path):
    import numpy as np
    from gradio_client import handle_file

    from codec.segment import PauseConfig, split_at_pauses

    a, sr = sf.read(speechlike_wav(tmp_path / "a.wav", 1.2), dtype="float32")
    gap = np.full(int(0.6 * sr), 1e-5, np.float32)
    sf.write(tmp_path / "two.wav", np.concatenate([a, gap, a[::-1].copy(), gap]), sr)
    import torch

    n = len(split_at_pauses(torch.from_numpy(sf.read(tmp_path / "two.wav", dtype="float32")[0]), sr,
                            PauseConfig(max_seconds=1.5)))
    assert n == 2
    text, plot, info = client.predict(handle_file(str(tmp_path / "two.wav")), "plain", api_name="/asr")
    assert text and plot and "split at pauses into" in info and "at most 1.5 s" in info


def test_continue_and_dialogue(client, clip):
    cont, both, _plot, _ = client.predict(clip, 0.8, 20, 0.95, 1, 0.5, api_name="/continue")
    assert 0 < _seconds(cont) < _seconds(both)
    # the conversation state lives in the client's session; the API takes (audio, shown messages)
    chat, reply, latency, _ = client.predict(clip, [], api_name="/dialogue")
    assert [m["role"] for m in chat] == ["user", "assistant", "assistant"]  # transcript, reply text, reply audio
    assert os.path.isfile(reply) and _seconds(reply) > 0
    assert "asr" in latency and "chat" in latency and "tts" in latency and "total" in latency


def test_codec_lab_reconstructs_with_metrics(client, clip):
    a, b, _spec, _tok, metrics = client.predict(clip, "codec/stacodec", 8, api_name="/codec")
    assert abs(_seconds(a) - _seconds(b)) < 1e-3 and "bitrate used" in metrics and "STOI" in metrics
    # a codebook count the codec cannot decode (e.g. left over from another codec) falls back to all
    *_, metrics = client.predict(clip, "codec/stacodec", 1, api_name="/codec")
    assert "2 of 2 codebooks" in metrics


def test_limits_come_back_as_messages(client, tmp_path):
    from gradio_client import handle_file

    with pytest.raises(Exception, match="at most 80 characters"):
        client.predict("x" * 81, "spk0", None, 0.8, 20, 0.95, 0, 1.0, api_name="/tts")
    # best-of-N: bounded, and a model without a CTC reader says it cannot pick among candidates
    with pytest.raises(Exception, match="greater than maximum value 4"):  # the slider bounds it
        client.predict("hello world.", "spk0", None, 0.8, 20, 0.95, 0, 1.0, "plain", 9, api_name="/tts")
    with pytest.raises(Exception, match="greater than maximum value 8"):  # and how often it chooses
        client.predict("hello world.", "spk0", None, 0.8, 20, 0.95, 0, 1.0, "plain", 1, 9, api_name="/tts")
    with pytest.raises(Exception, match="ctc_reader"):
        client.predict("hello world.", "spk0", None, 0.8, 20, 0.95, 0, 1.0, "plain", 2, api_name="/tts")
    with pytest.raises(Exception, match="limit is 4 s"):
        client.predict(handle_file(speechlike_wav(tmp_path / "long.wav", 5.0)), api_name="/asr")
