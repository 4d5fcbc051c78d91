"""The whole recipe on tiny settings: every stage produces its outputs, a rerun skips them all, and the
exported fp16 bundle loads through `SpeechPipeline` and speaks. Real stages (synthesizers, Whisper
teacher, judges) run, so this takes minutes on a shared 2-core CPU: marked slow."""
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from slm.recipe import load_settings, run_recipe
    from tests.test_slm_helpers import tiny_backbone_dir

    work = tmp_path_factory.mktemp("recipe")
    s = load_settings(ROOT / "configs" / "recipe" / "tiny.yaml",
                      [f"work_dir={work}", f"export.dir={work / 'bundle'}", f"lm.backbone={tiny_backbone_dir()}"])
    first = run_recipe(s, ROOT, log=lambda *_: None)
    return s, work, first


def test_every_stage_ran_and_produced_its_outputs(built):
    import json

    import torch

    _, work, first = built
    assert [r.name for r in first if not r.skipped] == ["synth", "real", "teacher", "codec", "tokenize", "lm",
                                                          "voice", "reader", "eval", "export"]
    n = len((work / "corpus" / "manifest.jsonl").read_text().splitlines())
    assert n > 0 and len((work / "tokens" / "index.jsonl").read_text().splitlines()) == n
    assert (work / "real" / "manifest.jsonl").stat().st_size > 0
    assert (work / "teacher" / "kmeans16.safetensors").exists() and (work / "codec" / "final" / "config.json").exists()
    assert (work / "lm" / "final" / "slm_config.json").exists()
    # the codec's decoder fine-tune: same tokens as the codec stage's model, and what the LM carries
    from codec.model import DualStreamCodec

    base, dec = (DualStreamCodec.from_pretrained(work / d / "final") for d in ("codec", "codec_dec"))
    bd, dd = base.decoder.state_dict(), dec.decoder.state_dict()
    assert base.tokenises_like(dec) and bd.keys() == dd.keys() and not all(torch.equal(bd[k], dd[k]) for k in bd)
    lm_codec = DualStreamCodec.from_pretrained(work / "lm_ft2" / "final" / "codec").state_dict()
    assert lm_codec.keys() == dec.state_dict().keys()
    assert all(torch.equal(v, dec.state_dict()[k]) for k, v in lm_codec.items())
    # the fine-tune runs each start from the model before them; the last is what gets evaluated and exported
    ft = json.loads((work / "lm_ft" / "final" / "slm_config.json").read_text())
    assert ft["tts_aligned"] is True and "asr_aligned" not in ft
    assert Path(ft["init_from"]) == (work / "lm" / "final").resolve()
    ft2 = json.loads((work / "lm_ft2" / "final" / "slm_config.json").read_text())
    assert ft2["tts_aligned"] is True and ft2["asr_aligned"] is True and ft2["tts_phones"] is True
    assert "tts_phones" not in ft
    index = [json.loads(x) for x in (work / "tokens" / "index.jsonl").read_text().splitlines()]
    assert all(r.get("phones") for r in index if r.get("words"))  # the manifest's phone times, for the phone form
    assert Path(ft2["init_from"]) == (work / "lm_ft" / "final").resolve()
    assert json.loads((work / "lm_ft2" / "train_config.json").read_text())["steps"] == 2  # fine-tune 1's, inherited
    lm_eval = json.loads((work / "eval" / "lm" / "lm_eval.json").read_text())
    assert {"tts", "asr", "asr_plain", "tts_floor"} <= set(lm_eval) and 0 <= lm_eval["asr"]["wer"]
    assert lm_eval["asr"]["form"] == "aligned" and lm_eval["asr_plain"]["form"] == "plain"
    # the reader stage installed the reader with its ASR settings; eval compares the other methods
    assert lm_eval["asr_ctc"]["form"] == "ctc" and lm_eval["asr_fused"]["form"] == "fused"
    voice = json.loads((work / "voice" / "final" / "slm_config.json").read_text())
    assert voice["asr_fused"] == {"lm_weight": 0.5, "beam": 2, "lexicon": "wordfreq:5000"}
    assert voice["asr_joint"] == {"ctc_weight": 0.5, "beam": 2} and voice.get("asr_method", "lm") == "lm"
    assert {"floor", "codec", "head"} <= set(lm_eval["head"])  # where TTS loses intelligibility
    # the voice stage: head tokens, a decoder fine-tune on them (same tokens), the LM with that decoder
    assert len((work / "head_tokens" / "index.jsonl").read_text().splitlines()) == 6
    voiced = DualStreamCodec.from_pretrained(work / "voice_dec" / "final")
    assert dec.tokenises_like(voiced) and not torch.equal(voiced.decoder.state_dict()[next(iter(dd))], dd[next(iter(dd))])
    info = json.loads((work / "voice_dec" / "final" / "training.json").read_text())
    assert info["head_tokens"] == str(work / "head_tokens") and info["init_from"] == str(work / "codec_dec" / "final")
    bundle_codec = DualStreamCodec.from_pretrained(work / "voice" / "final" / "codec").state_dict()
    assert all(torch.equal(v, voiced.state_dict()[k]) for k, v in bundle_codec.items())
    assert (work / "voice" / "final" / "adapter").is_dir()
    assert Path(lm_eval["bundle"]).resolve() == (work / "voice" / "final").resolve()
    for stage in ("synth", "codec", "lm", "eval"):
        stamp = json.loads((work / "stamps" / f"{stage}.json").read_text())
        assert stamp["wall_s"] > 0 and stamp["commands"]


def test_rerun_skips_every_completed_stage(built):
    from slm.recipe import run_recipe

    s, _, _ = built
    assert all(r.skipped for r in run_recipe(s, ROOT, log=lambda *_: None))


def test_export_is_fp16_small_with_a_model_card_and_loads(built):
    import torch
    from safetensors import safe_open

    from slm.pipeline import SpeechPipeline

    _, work, _ = built
    b = work / "bundle"
    files = list(b.rglob("*.safetensors"))
    assert files and sum(p.stat().st_size for p in b.rglob("*") if p.is_file()) < 80 * 2**20
    for f in files:
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118
                t = fh.get_tensor(k)
                assert not t.is_floating_point() or t.dtype == torch.float16, (f, k, t.dtype)
    card = (b / "README.md").read_text()
    assert "| ASR-by-token | WER (aligned form) |" in card and "| ASR-by-token | WER (plain form) |" in card
    assert "Known limits" in card and "sacodec" in card
    assert "| continuation | DNSMOS OVRL |" in card and "| conditioning | TTS: semantic-token loss gain" in card
    assert "- Codec decoder fine-tune (from the codec above; only decoder, bottleneck.ac_out trained" in card
    assert "- Voice stage (the bundle's decoder): the LM's codec with only decoder, bottleneck.ac_out, bottleneck.ac_up" in card
    assert "- LM fine-tune 1 (a run from the LM above" in card and "aligned TTS form" in card
    assert "- LM fine-tune 2 (a run from the fine-tune above" in card and "aligned TTS and ASR forms" in card
    assert "| conditioning | aligned TTS: semantic-token loss gain" in card
    assert "| conditioning | aligned ASR: word loss gain" in card
    assert "![training curves](training.png)" in card and (b / "training.png").stat().st_size > 5000
    pipe = SpeechPipeline.from_pretrained(b)
    wav = pipe.tts("hello there.", max_seconds=0.5, seed=0)
    assert wav.ndim == 2 and wav.shape[0] == 1 and torch.isfinite(wav).all()
