"""flite (CMU) voices through the command line: ``flite -psdur`` prints each segment's end time.

Voices built into Debian's flite 2.2: slt, rms, awb (clustergen, 16 kHz) and kal16 (diphone, 16 kHz);
``kal`` (8 kHz) and ``awb_time`` (a talking clock) are not used. Speed is varied with the
``duration_stretch`` feature and pitch with ``int_f0_target_mean`` (honoured by all four).
Word times: flite cannot print them, so they are derived from segments and flite's own lexicon: ``t2p``
on the text with a full stop after every word gives each word's phones between pauses; when the
phone counts agree with the synthesised segments the words are aligned, otherwise ``words`` is empty.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

import numpy as np
import soundfile as sf

from .phones import FLITE_MAP, segments_from_ends

VOICES = ("slt", "rms", "awb", "kal16")
_WORD_RE = re.compile(r"[a-z']+")


def available_voices() -> list[str]:
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True).stdout
    have = set(out.split(":", 1)[-1].split())
    return [v for v in VOICES if v in have]


def synth(text: str, voice: str, stretch: float = 1.0, f0: float | None = None
          ) -> tuple[np.ndarray, int, list[list], list[list]]:
    """Returns (int16 audio, sample rate, phones [[s, e, label]], words [[s, e, word]])."""
    fd, path = tempfile.mkstemp(suffix=".wav")
    os.close(fd)
    try:
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}"]
        if f0 is not None:
            cmd += ["--setf", f"int_f0_target_mean={f0}"]
        res = subprocess.run(cmd + ["-t", text, "-o", path, "-psdur"], capture_output=True, text=True,
                             timeout=120, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"flite failed ({res.returncode}): {res.stderr.strip()[:200]}")
        audio, sr = sf.read(path, dtype="int16")
    finally:
        os.unlink(path)
    ends = [(s.rsplit(":", 1)[0], float(s.rsplit(":", 1)[1])) for s in res.stdout.split() if ":" in s]
    dur = len(audio) / sr
    phones = segments_from_ends(ends, dur, "flite")
    return audio, sr, phones, _words(text, ends)


def _words(text: str, ends: list[tuple[str, float]]) -> list[list]:
    """Align words to segments with flite's letter-to-sound (``t2p``), see module docstring."""
    words = _WORD_RE.findall(text.lower())
    if not words:
        return []
    out = subprocess.run(["t2p", ". ".join(words) + "."], capture_output=True, text=True,
                         check=False).stdout.split()
    groups, cur = [], 0
    for p in out:
        if p == "pau":
            if cur:
                groups.append(cur)
            cur = 0
        else:
            cur += 1
    if cur:
        groups.append(cur)
    segs, t = [], 0.0
    for sym, t1 in ends:
        if FLITE_MAP.get(sym) != "sil":
            segs.append((t, t1))
        t = t1
    if len(groups) != len(words) or sum(groups) != len(segs):
        return []
    aligned, i = [], 0
    for w, n in zip(words, groups):
        aligned.append([round(segs[i][0], 5), round(segs[i + n - 1][1], 5), w])
        i += n
    return aligned
