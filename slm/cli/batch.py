"""Many inputs per model load: `slm asr` over several files or long recordings, `slm tts --batch` over a text file.

Inputs are checked before the (slow) model load; results are written as each input is done, so that an
interrupted run loses nothing and the same command picks up where it stopped.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def asr_inputs(wavs: list[str], list_file: str | None) -> list[str]:
    """The audio paths to transcribe, in order, each once: ``wavs`` then those of ``list_file`` (a text file with
    one path per line, ``#`` comments allowed, or a ``.jsonl`` manifest whose ``path`` (or ``audio``) keys are
    relative to its folder)."""
    paths = list(wavs)
    if list_file:
        lf = Path(list_file)
        if not lf.is_file():
            raise FileNotFoundError(f"{lf}: expected a list of audio files, got no such file")
        if lf.suffix == ".jsonl":
            from slm.lm_data import read_jsonl

            for n, row in enumerate(read_jsonl(lf), 1):
                p = row.get("path", row.get("audio"))
                if not isinstance(p, str):
                    raise ValueError(f"{lf}: row {n} has no 'path' (or 'audio') string")  # noqa: TRY004 (bad input)
                paths.append(str(lf.parent / p) if not os.path.isabs(p) else p)
        else:
            paths += [ln.strip() for ln in lf.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not paths:
        raise ValueError("expected audio file(s) to transcribe (arguments, or --list FILE), got none")
    return list(dict.fromkeys(paths))


def check_inputs(paths: list[str], max_seconds: float, *, skip_bad: bool = False) -> dict[str, float]:
    """Each input's length in seconds, checked without the model: a missing, unreadable, empty or too long file
    raises :class:`codec.audio.AudioError` naming it, or with ``skip_bad`` is noted on stderr and left out.
    Files soundfile reads are checked from their header; others (ffmpeg formats) are decoded once."""
    from codec.audio import AudioError, check_audio_file, load_audio

    seconds: dict[str, float] = {}
    bad = []
    for p in paths:
        try:
            s = check_audio_file(p, max_seconds)
            seconds[p] = s if s is not None else load_audio(p, 16000, max_seconds=max_seconds).shape[-1] / 16000
        except AudioError as e:
            if not skip_bad:
                more = f" ({len(paths)} inputs; --skip-bad goes on without the bad ones)" if len(paths) > 1 else ""
                raise AudioError(f"{e}{more}") from None
            bad.append(p)
            print(f"slm asr: skipped: {e}", file=sys.stderr)
    if bad:
        print(f"slm asr: {len(bad)} of {len(paths)} inputs skipped", file=sys.stderr)
    return seconds


def read_done(out: str, key: str = "audio") -> set[str]:
    """The ``key`` values of a JSONL results file written by an earlier run (none if it does not exist). A last line
    cut short by a kill is dropped from the file, so that the rerun appends after whole rows."""
    f = Path(out)
    if not f.is_file():
        return set()
    lines = f.read_text().splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines):
                raise ValueError(f"{f}:{n}: not JSON; --out must be a results file of this command") from None
            f.write_text("".join(ln + "\n" for ln in lines[: n - 1]))  # the row being written when it stopped
    if any(not isinstance(r, dict) or key not in r for r in rows):
        raise ValueError(f"{f}: rows without {key!r}; --out must be a results file of this command")
    return {r[key] for r in rows}


def transcribe_files(pipe, paths: list[str], seconds: dict[str, float], args, **asr_kw) -> int:
    """Transcribe ``paths`` with one pipeline: clips longer than ``args.segment_seconds`` piece by piece at their
    pauses (:meth:`SpeechPipeline.asr_segments`). Prints ``path<TAB>text`` per file (the text alone for one file),
    appends a row per file to ``args.out`` (JSONL) and writes ``args.srt``. Returns the number of files skipped
    as unreadable (``args.skip_bad``; otherwise the error stops the run, rows already written are kept)."""
    from tqdm import tqdm

    from codec.audio import AudioError, load_audio
    from codec.segment import PauseConfig
    from slm.pipeline import WordTime, subtitles

    sr = pipe.sample_rate
    pauses = PauseConfig(max_seconds=args.segment_seconds)
    # the bar counts whole milliseconds of audio, never past its total (float steps that overshoot it by a
    # rounding make tqdm warn and show a negative time left); shown in seconds
    ms = {p: round(seconds[p] * 1000) for p in paths}
    total = sum(ms.values())
    bar = tqdm(total=total, unit="s", unit_scale=0.001, desc="slm asr (audio seconds)", file=sys.stderr,
               disable=total <= args.segment_seconds * 1000,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 (closed below; rows flushed one by one)
    bad = 0

    def advance(upto: int) -> None:
        upto = min(upto, total)
        if upto > bar.n:
            bar.update(upto - bar.n)

    try:
        start = 0  # where this file starts in the total (ms)
        for p in paths:
            try:
                wav = load_audio(p, sr, max_seconds=args.max_input_seconds)
            except AudioError as e:
                if not args.skip_bad:
                    raise
                bad += 1
                start += ms[p]
                advance(start)
                tqdm.write(f"slm asr: skipped: {e}", file=sys.stderr)
                continue
            dur = wav.shape[-1] / sr
            if dur <= args.segment_seconds:
                text = pipe.asr(wav, sr, **asr_kw).strip()
                segs = [WordTime(text, 0.0, round(dur, 3))] if text else []
            else:
                segs = []
                for seg in pipe.asr_segments(wav, sr, pauses, **asr_kw):
                    segs.append(seg)
                    advance(start + min(round(seg.end * 1000), ms[p]))
            start += ms[p]
            advance(start)
            text = " ".join(s.text for s in segs)
            tqdm.write(f"{p}\t{text}" if len(paths) > 1 or out else text, file=sys.stdout)
            if not text:
                tqdm.write(f"slm asr: no words recognised in {p}", file=sys.stderr)
            if out:
                row = {"audio": p, "seconds": round(dur, 3), "text": text,
                       "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in segs]}
                out.write(json.dumps(row) + "\n")
                out.flush()
            if args.srt:
                Path(args.srt).write_text(subtitles(segs, max_words=1))
                tqdm.write(f"{args.srt}: {len(segs)} cues", file=sys.stderr)
    finally:
        bar.close()
        if out:
            out.close()
    return bad


def tts_lines(batch: str) -> list[tuple[str, str]]:
    """``(name, text)`` of each line of a TTS batch file: ``text``, or ``name<TAB>text`` (the output's file name;
    otherwise the line number, 0001, 0002, ...). Empty and ``#`` lines are skipped. Every text is checked here,
    before the model loads, and names must be unique and file-name safe."""
    import re

    from slm.pipeline import check_text

    f = Path(batch)
    if not f.is_file():
        raise FileNotFoundError(f"{f}: expected a text file with one utterance per line, got no such file")
    items: list[tuple[str, str]] = []
    for n, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, text = line.split("\t", 1) if "\t" in line else (f"{n:04d}", line)
        name = name.strip()
        if not re.fullmatch(r"[\w.-]{1,100}", name) or name.startswith("."):
            raise ValueError(f"{f}:{n}: the name {name!r} is not a safe file name (letters, digits, _ . -)")
        try:
            check_text(text)
        except ValueError as e:
            raise ValueError(f"{f}:{n}: {e}") from None
        items.append((name, text.strip()))
    if not items:
        raise ValueError(f"{f}: expected at least one line of text, got none")
    seen: set[str] = set()
    for name, _ in items:
        if name in seen:
            raise ValueError(f"{f}: the name {name!r} is used twice")
        seen.add(name)
    return items


def synthesize_lines(pipe, items: list[tuple[str, str]], out_dir: str, tts_kw: dict, seed: int | None) -> int:
    """Speak each ``(name, text)`` into ``out_dir/name.wav`` and append its row (id, path, text, seconds) to
    ``out_dir/manifest.jsonl`` (the manifest format of `slm data`, so the output can be scored or tokenised).
    Items already in the manifest are skipped, so a rerun finishes an interrupted batch. With ``seed``, item ``i``
    uses ``seed + i``: the same file comes out whichever run makes it. Returns how many were made."""
    from tqdm import tqdm

    from codec.audio import save_audio

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    manifest = d / "manifest.jsonl"
    done = read_done(str(manifest), key="id")
    todo = [(i, name, text) for i, (name, text) in enumerate(items) if name not in done]
    if done:
        print(f"slm tts: {len(items) - len(todo)} of {len(items)} lines already in {manifest}", file=sys.stderr)
    made = 0
    with open(manifest, "a") as out, tqdm(total=len(todo), desc="slm tts", unit="utt", file=sys.stderr) as bar:
        for i, name, text in todo:
            wav = pipe.tts(text, **{**tts_kw, "seed": None if seed is None else seed + i})
            path = d / f"{name}.wav"
            tmp = d / f".{name}.part.wav"
            save_audio(tmp, wav, pipe.sample_rate)
            tmp.replace(path)  # a kill never leaves a half-written wav under the final name
            row = {"id": name, "path": path.name, "text": text, "sample_rate": pipe.sample_rate,
                   "duration": round(wav.shape[-1] / pipe.sample_rate, 5), "num_samples": int(wav.shape[-1])}
            out.write(json.dumps(row) + "\n")
            out.flush()
            made += 1
            bar.update(1)
    return made
