"""Real-speech validation set: the Debian Asterisk English prompts (one female speaker, Allison).

Audio: ``asterisk-core-sounds-en-g722`` (16 kHz G.722, decoded by ffmpeg through
``codec.audio.load_audio``). Transcripts: ``core-sounds-en.txt`` of ``asterisk-core-sounds-en``
(``name: Transcript.`` per line). Transcripts are normalised like the synthetic corpus
(`adapters.corpus.text.normalise`); prompts without a transcript, with a non-speech transcript
(``[beep tone]``) or one we cannot normalise are skipped and counted. Output: 16 kHz wavs and a
manifest with the corpus schema (phones/words empty, split "test", speaker "asterisk").
"""
from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path

SOUNDS_DIRS = ("/usr/share/asterisk/sounds/en_US_f_Allison", "/usr/share/asterisk/sounds/en")
TRANSCRIPTS = ("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz",
               "/usr/share/asterisk/sounds/en/core-sounds-en.txt")
_ALLOWED = re.compile(r"^[a-z' ,.;:!?]+$")


def read_transcripts(path: str | Path | None = None) -> dict[str, str]:
    """``{prompt name: transcript}`` from the package's text file (``digits/1: one``)."""
    cands = [Path(path)] if path else [Path(p) for p in TRANSCRIPTS]
    for p in cands:
        if p.is_file():
            if p.suffix == ".gz":
                with gzip.open(p, "rt", errors="replace") as f:
                    raw = f.read()
            else:
                raw = p.read_text(errors="replace")
            out = {}
            for line in raw.splitlines():
                if line.startswith(";") or ":" not in line:
                    continue
                name, text = line.split(":", 1)
                if name.strip() and " " not in name.strip():
                    out[name.strip()] = text.strip()
            return out
    raise FileNotFoundError(f"no Asterisk transcript file: expected one of {[str(c) for c in cands]}")


def find_prompts(root: str | Path | None = None) -> tuple[Path, dict[str, Path]]:
    roots = [Path(root)] if root else [Path(p) for p in SOUNDS_DIRS]
    for r in roots:
        files = sorted(r.rglob("*.g722")) if r.is_dir() else []
        if files:
            return r, {str(f.relative_to(r).with_suffix("")): f for f in files}
    raise FileNotFoundError(f"no .g722 prompts under {[str(r) for r in roots]}: "
                            "expected the Debian package asterisk-core-sounds-en-g722")


def normalise_prompt(text: str) -> str | None:
    from adapters.corpus.text import normalise

    if not text or text.startswith("["):
        return None
    t = re.sub(r"\[[^\]]*\]", " ", text)
    try:
        t = normalise(t.replace("...", ","))
    except (ValueError, OverflowError):
        return None
    t = t.replace("-", " ")
    t = re.sub(r"\s+", " ", t).strip(" ,")
    return t if t and _ALLOWED.match(t) and re.search(r"[a-z]", t) else None


def build_real_set(out_dir: str | Path, sounds_root: str | Path | None = None,
                   transcripts: str | Path | None = None, limit: int | None = None) -> dict:
    """Decode, normalise and write the set; returns a summary (also ``summary.json``)."""
    from tqdm import tqdm

    from codec.audio import AudioError, load_audio, save_audio

    t0 = time.time()
    out = Path(out_dir)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    root, prompts = find_prompts(sounds_root)
    texts = read_transcripts(transcripts)
    if limit is not None:
        prompts = dict(list(prompts.items())[:limit])
    records, no_text, bad_text, bad_audio = [], 0, 0, 0
    for name, f in tqdm(prompts.items(), desc="asterisk prompts", unit="file"):
        if name not in texts:
            no_text += 1
            continue
        t = normalise_prompt(texts[name])
        if t is None:
            bad_text += 1
            continue
        uid = "asterisk-" + name.replace("/", "_")
        wav_path = out / "wavs" / f"{uid}.wav"
        try:
            wav = load_audio(f, 16000)
        except AudioError:
            bad_audio += 1
            continue
        if not wav_path.exists():
            save_audio(wav_path.with_suffix(".tmp.wav"), wav, 16000)
            wav_path.with_suffix(".tmp.wav").replace(wav_path)
        n = wav.shape[-1]
        records.append({"id": uid, "path": f"wavs/{uid}.wav", "text": t, "raw_text": texts[name],
                        "speaker": "asterisk", "synth": "real", "voice": {"source": str(f)},
                        "sample_rate": 16000, "duration": round(n / 16000, 5), "num_samples": n,
                        "split": "test", "sentence_id": name, "phones": [], "words": []})
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"utterances": len(records), "minutes": round(sum(r["duration"] for r in records) / 60, 2),
               "prompts_found": len(prompts), "skipped_no_transcript": no_text,
               "skipped_non_speech_or_unnormalisable": bad_text, "skipped_unreadable_audio": bad_audio,
               "source": str(root), "build_time_s": round(time.time() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
