"""Synthetic corpus: schema, held-out splits, alignments covering the audio, phone inventory, resume."""
from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import pytest
import soundfile as sf

from adapters.corpus import phones, text
from adapters.corpus.build import build_corpus, speakers

FIELDS = {"id": str, "path": str, "text": str, "raw_text": str, "speaker": str, "synth": str, "voice": dict,
          "sample_rate": int, "duration": float, "num_samples": int, "split": str, "sentence_id": str,
          "phones": list, "words": list}


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    summary = build_corpus(out, hours=0.03, seed=0, workers=1, progress=False)
    return out, summary


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def check_corpus(out: Path) -> list[dict]:
    """Every invariant of a built corpus; shared by the fast and the slow test."""
    recs = _records(out)
    assert recs, "empty manifest"
    assert {r["synth"] for r in recs} == {"espeak", "flite", "festival"}
    assert {r["split"] for r in recs} == {"train", "valid", "test"}
    for r in recs:
        for k, t in FIELDS.items():
            assert isinstance(r[k], t), (k, r[k])
        info = sf.info(str(out / r["path"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == r["num_samples"] and abs(r["duration"] - info.frames / 16000) < 1e-4
        ph = r["phones"]
        assert ph[0][0] == 0.0 and ph[0][2] == "sil" and ph[-1][2] == "sil"
        assert abs(ph[-1][1] - r["duration"]) <= 0.010, (r["id"], ph[-1][1], r["duration"])
        for (a0, a1, _), (b0, _, _) in pairwise(ph):
            assert a1 == pytest.approx(b0, abs=1e-4) and a1 >= a0
        assert all(p[2] in phones.INVENTORY for p in ph)
        assert all(0 <= w0 <= w1 <= r["duration"] + 1e-4 for w0, w1, _ in r["words"])
        if r["words"]:  # word entries spell out the transcript, in order
            assert " ".join(w for _, _, w in r["words"]).split() == re.findall(r"[a-z']+", r["text"])
    by = {s: [r for r in recs if r["split"] == s] for s in ("train", "valid", "test")}
    test_spk = {r["speaker"] for r in by["test"]}
    held = {s.id for s in speakers() if s.held_out}
    assert test_spk <= held
    assert not test_spk & {r["speaker"] for r in by["train"] + by["valid"]}
    train_sent = {r["sentence_id"] for r in by["train"]}
    assert not train_sent & {r["sentence_id"] for r in by["test"] + by["valid"]}
    assert not {r["sentence_id"] for r in by["test"]} & {r["sentence_id"] for r in by["valid"]}
    return recs


def test_corpus_invariants(small_corpus):
    out, summary = small_corpus
    recs = check_corpus(out)
    assert summary["utterances"] == len(recs) and summary["failures"] == 0
    for split in ("train", "valid", "test"):
        rows = (out / f"manifest.{split}.jsonl").read_text().splitlines()
        assert len(rows) == summary["splits"][split]["utterances"]
    assert sum(bool(r["words"]) for r in recs) >= 0.6 * len(recs)  # words aligned for most utterances


def test_resume_skips_existing_and_repairs(small_corpus):
    out, _ = small_corpus
    before = (out / "manifest.jsonl").read_text()
    victim = _records(out)[1]["id"]
    (out / "meta" / f"{victim}.json").unlink()
    again = build_corpus(out, hours=0.03, seed=0, workers=1, progress=False)
    assert again["synthesised_this_run"] == 1  # only the removed utterance
    assert (out / "manifest.jsonl").read_text() == before
    again = build_corpus(out, hours=0.03, seed=0, workers=1, progress=False)
    assert again["synthesised_this_run"] == 0


def test_phone_tables_map_into_inventory():
    assert len(phones.INVENTORY) == 40 and len(set(phones.INVENTORY)) == 40
    for name, table in phones.TABLES.items():
        bad = {k: v for k, v in table.items() if v is not None and v not in phones.INVENTORY}
        assert not bad, (name, bad)
    with pytest.raises(phones.UnknownPhone, match="no entry"):
        phones.to_inventory("Q!", "espeak")
    segs = phones.segments_from_ends([("pau", 0.1), ("hh", 0.2), ("ax", 0.25)], 0.4, "flite")
    assert segs == [[0.0, 0.1, "sil"], [0.1, 0.2, "hh"], [0.2, 0.25, "ah"], [0.25, 0.4, "sil"]]


def test_text_normalisation():
    assert text.normalise("Mr. Smith paid $3.50 for 2 eggs on the 2nd of May, 1984.") == (
        "mister smith paid three dollars and fifty cents for two eggs on the second of may, "
        "nineteen eighty four.")
    assert text.normalise("Dr. Who is 50% right & wrong.") == "doctor who is fifty percent right and wrong."
    assert text.clean("Tiny.") is None  # fewer than 3 words
    assert text.clean("See <http://x.org> now please.") is None  # odd characters


def test_sentence_pool_and_fixed_splits():
    sents = text.load_sentences()
    assert len(sents) >= 20000
    assert len({s.text for s in sents}) == len(sents)
    frac = {k: sum(s.split == k for s in sents) / len(sents) for k in ("train", "valid", "test")}
    assert 0.03 < frac["test"] < 0.07 and 0.03 < frac["valid"] < 0.07
    for s in sents[:2000]:
        assert 3 <= len(s.text.split()) <= 30 and s.split == text.sentence_split(s.text)


@pytest.mark.slow
def test_one_hour_corpus(tmp_path):
    summary = build_corpus(tmp_path, hours=1.0, seed=1, workers=2, progress=False)
    recs = check_corpus(tmp_path)
    assert 0.8 < summary["hours"] < 1.3 and summary["failures"] == 0
    assert len(recs) == summary["utterances"]
    again = build_corpus(tmp_path, hours=1.0, seed=1, workers=2, progress=False)
    assert again["synthesised_this_run"] == 0
