"""`slm codec` CLI: encode/decode round trip, manifest tokenisation with workers, teacher-cache + kmeans."""
import json

import pytest
import torch

from codec.config import CodecConfig
from codec.contracts import CodecTokens
from codec.model import DualStreamCodec
from slm.cli import main
from tests.test_codec_train import make_corpus


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "rvq"
    DualStreamCodec(CodecConfig.tiny("rvq")).eval().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n=4)


def test_encode_decode_round_trip(ckpt, corpus, tmp_path):
    tok, out = tmp_path / "a.tokens.safetensors", tmp_path / "a.wav"
    assert main(["--threads", "1", "codec", "encode", str(ckpt), str(corpus / "wavs" / "u0.wav"), str(tok)]) == 0
    t = CodecTokens.load(tok)
    model = DualStreamCodec.from_pretrained(ckpt)
    assert t.semantic.shape == (1, 1, 13) and t.acoustic.shape[1] == model.n_acoustic_codebooks  # 1 s @ 12.5 Hz
    assert main(["--threads", "1", "codec", "decode", str(ckpt), str(tok), str(out)]) == 0
    from codec.audio import load_audio

    wav = load_audio(out, 16000)
    assert torch.allclose(wav, model.decode(t)[0].clamp(-1, 1), atol=1e-3)  # file == in-memory decode


@pytest.mark.slow  # two spawned worker processes each import torch and load the codec
def test_tokenize_manifest_two_workers(ckpt, corpus, tmp_path):
    out = tmp_path / "tok"
    assert main(["--threads", "1", "codec", "tokenize", str(ckpt), "--manifest", str(corpus / "manifest.jsonl"),
                 "--out", str(out), "--workers", "2"]) == 0
    index = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    assert [r["id"] for r in index] == ["u0", "u1", "u2", "u3"]
    model = DualStreamCodec.from_pretrained(ckpt)
    from codec.audio import load_audio

    for r in index[:2]:  # same codes as encoding in this process
        t = CodecTokens.load(out / r["tokens"])
        ref = model.encode(load_audio(corpus / "wavs" / f"{r['id']}.wav", 16000)[None])
        assert torch.equal(t.semantic, ref.semantic) and r["n_semantic"] == t.semantic.shape[-1]
    # resumable: a second run keeps the files
    mtime = (out / index[0]["tokens"]).stat().st_mtime_ns
    assert main(["codec", "tokenize", str(ckpt), "--manifest", str(corpus / "manifest.jsonl"), "--out", str(out)]) == 0
    assert (out / index[0]["tokens"]).stat().st_mtime_ns == mtime


def test_tokenize_resume_refuses_another_codecs_tokens(ckpt, corpus, tmp_path, capsys):
    """A resumed tokenisation keeps the files only if the same codec made them: a codec retrained in place (same
    dir, new weights) would otherwise leave stale tokens beside new ones."""
    import shutil

    mine = tmp_path / "rvq"
    shutil.copytree(ckpt, mine)
    out, manifest = tmp_path / "tok", str(corpus / "manifest.jsonl")
    assert main(["--threads", "1", "codec", "tokenize", str(mine), "--manifest", manifest, "--out", str(out)]) == 0
    meta = CodecTokens.load_with_metadata(out / "items" / "u0.safetensors")[1]
    assert meta["variant"] == "rvq" and len(meta["codec_sha256"]) == 16
    assert main(["--threads", "1", "codec", "tokenize", str(mine), "--manifest", manifest, "--out", str(out)]) == 0
    model = DualStreamCodec.from_pretrained(mine)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(mine)  # retrained in place
    capsys.readouterr()
    assert main(["--threads", "1", "codec", "tokenize", str(mine), "--manifest", manifest, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "was encoded by another codec" in err and "codec_sha256" in err and "new --out" in err
    # decoding is not judged by the weights' digest: a decoder fine-tune keeps the tokens valid
    assert main(["--threads", "1", "codec", "decode", str(mine), str(out / "items" / "u0.safetensors"),
                 str(tmp_path / "u0.wav")]) == 0


def test_teacher_cache_kmeans_and_sac_encode(corpus, tmp_path):
    # teacher-cache and kmeans through the CLI with a tiny local HuBERT (hidden 16 = tiny sac teacher_dim)
    from transformers import HubertConfig, HubertModel

    hub = tmp_path / "hubert"
    HubertModel(HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
                ).save_pretrained(hub)
    feats = tmp_path / "feats"
    assert main(["--threads", "1", "codec", "teacher-cache", "--manifest", str(corpus / "manifest.jsonl"),
                 "--teacher", f"{hub}:1", "--out", str(feats)]) == 0
    meta = json.loads((feats / "meta.json").read_text())
    assert meta["frame_rate"] == 50.0 and meta["dim"] == 16 and len(list((feats / "items").iterdir())) == 4
    km = tmp_path / "km-12.5hz"  # a dotted name keeps its dot
    assert main(["codec", "kmeans", "--features", str(feats), "--k", "4", "--rate", "12.5", "--out", str(km),
                 "--splits", "train,valid"]) == 0
    assert json.loads((tmp_path / "km-12.5hz.json").read_text())["spec"] == f"{hub}:1"
    # a sac codec with those centroids encodes through the same teacher
    from safetensors.torch import load_file

    cfg = CodecConfig.tiny("sac")
    cfg.semantic_codebook_size = 4
    model = DualStreamCodec(cfg)
    model.set_teacher_codebook(load_file(str(tmp_path / "km-12.5hz.safetensors"))["centroids"])
    model.save_pretrained(tmp_path / "sac")
    tok = tmp_path / "s.tokens.safetensors"
    assert main(["codec", "encode", str(tmp_path / "sac"), str(corpus / "wavs" / "u1.wav"), str(tok),
                 "--teacher", f"{hub}:1"]) == 0
    units = load_file(str(tmp_path / "km-12.5hz.units" / "items" / "u1.safetensors"))["units"].long()
    assert torch.equal(CodecTokens.load(tok).semantic[0, 0], units)  # semantic tokens = cached teacher units


def test_decode_refuses_bad_token_files(ckpt, corpus, tmp_path, capsys):
    """A token file that is not one, codes stored as floats, a file from another codec, or an output name without
    an audio format: one clear error line each (exit 2), and no audio written."""
    tok, out = tmp_path / "a.tokens.safetensors", tmp_path / "a.wav"
    assert main(["--threads", "1", "codec", "encode", str(ckpt), str(corpus / "wavs" / "u0.wav"), str(tok)]) == 0
    good = CodecTokens.load(tok)
    (tmp_path / "trunc.safetensors").write_bytes(tok.read_bytes()[:40])
    CodecTokens(good.semantic.float(), good.acoustic, lengths=good.lengths).save(tmp_path / "float.safetensors")
    good.save(tmp_path / "other.safetensors", metadata={"variant": "stacodec", "semantic_rate": "25.0"})
    cases = {"trunc.safetensors": "not a readable token file", "float.safetensors": "must be integers",
             "other.safetensors": "encoded by another codec", "missing.safetensors": "no such token file"}
    capsys.readouterr()
    for name, says in cases.items():
        assert main(["--threads", "1", "codec", "decode", str(ckpt), str(tmp_path / name), str(out)]) == 2, name
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, (name, err)
    assert main(["--threads", "1", "codec", "decode", str(ckpt), str(tok), str(tmp_path / "a")]) == 2
    assert "extension must name its format" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "a").exists()
    # a token file lands in a folder that does not exist yet, as audio does
    deep = tmp_path / "new" / "dir" / "a.tokens.safetensors"
    assert main(["--threads", "1", "codec", "encode", str(ckpt), str(corpus / "wavs" / "u0.wav"), str(deep)]) == 0
    assert torch.equal(CodecTokens.load(deep).semantic, good.semantic)
