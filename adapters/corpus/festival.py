"""festival voices through a Scheme script per batch of utterances (one process start per batch).

For each utterance the script saves a RIFF wav and prints every ``Segment`` (name, end time) and every
``Word`` (name, word_start, word_end). Voices: ``kal_diphone``, ``ked_diphone`` (radio phone set) and
``cmu_us_slt_arctic_hts`` (CMU lex), whichever are installed. Speed varies with ``Duration_Stretch``
and pitch with ``int_lr_params`` (target_f0_mean) on the diphone voices; the HTS voice ignores both
in festival 2.5, so it has one setting only. Words come from the Word relation (clitics such as
"'s" joined to their word); when festival's words differ from the transcript's, ``words`` is empty.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from .phones import segments_from_ends

VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
VARIABLE = {"kal_diphone": True, "ked_diphone": True, "cmu_us_slt_arctic_hts": False}
_WORD_RE = re.compile(r"[a-z']+")
_VOICE_DIRS = ("/usr/share/festival/voices/english", "/usr/share/festival/voices/us")


@dataclass
class FestivalJob:
    text: str
    voice: str
    stretch: float = 1.0
    f0: float | None = None


def available_voices() -> list[str]:
    have = set()
    for d in _VOICE_DIRS:
        if os.path.isdir(d):
            have.update(os.listdir(d))
    return [v for v in VOICES if v in have]


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def synth_batch(jobs: list[FestivalJob]) -> list[tuple[np.ndarray, int, list[list], list[list]] | None]:
    """Synthesise a batch in one festival process; each item is (int16 audio, sr, phones, words) or None."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        for i, j in enumerate(jobs):
            wav = os.path.join(tmp, f"{i}.wav")
            lines += [f"(voice_{j.voice})", f"(Parameter.set 'Duration_Stretch {j.stretch})"]
            if j.f0 is not None:
                lines.append(f"(set! int_lr_params '((target_f0_mean {j.f0}) (target_f0_std {j.f0 / 7:.1f}) "
                             "(model_f0_mean 170) (model_f0_std 34)))")
            lines += [
                f"(set! utt (Utterance Text {_quote(j.text)}))", "(utt.synth utt)",
                f"(utt.save.wave utt {_quote(wav)} 'riff)",
                f'(format t "UTT {i}\\n")',
                ("(mapcar (lambda (s) (format t \"SEG %s %f\\n\" (item.name s) (item.feat s \"end\"))) "
                 "(utt.relation.items utt 'Segment))"),
                ("(mapcar (lambda (w) (format t \"WORD %s %f %f\\n\" (item.name w) (item.feat w \"word_start\") "
                 "(item.feat w \"word_end\"))) (utt.relation.items utt 'Word))"),
            ]
        script = os.path.join(tmp, "batch.scm")
        with open(script, "w") as f:
            f.write("\n".join(lines) + "\n")
        res = subprocess.run(["festival", "-b", script], capture_output=True, text=True, timeout=600,
                             check=False)
        parsed: dict[int, tuple[list, list]] = {}
        cur = None
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "UTT":
                cur = int(parts[1])
                parsed[cur] = ([], [])
            elif cur is not None and len(parts) == 3 and parts[0] == "SEG":
                parsed[cur][0].append((parts[1], float(parts[2])))
            elif cur is not None and len(parts) == 4 and parts[0] == "WORD":
                ws, w = parsed[cur][1], parts[1].lower()
                if w.startswith("'") and ws:  # festival splits "elevator's" into "elevator" + "'s"
                    ws[-1][1], ws[-1][2] = max(ws[-1][1], float(parts[3])), ws[-1][2] + w
                else:
                    ws.append([float(parts[2]), float(parts[3]), w])
        out = []
        for i in range(len(jobs)):
            wav = os.path.join(tmp, f"{i}.wav")
            if i not in parsed or not os.path.exists(wav):
                out.append(None)
                continue
            audio, sr = sf.read(wav, dtype="int16")
            if audio.ndim > 1:
                audio = audio[:, 0]
            dur = len(audio) / sr
            ends, words = parsed[i]
            phones = segments_from_ends(ends, dur, "festival")
            words = [[round(max(0.0, min(a, dur)), 5), round(max(0.0, min(max(a, b), dur)), 5), w]
                     for a, b, w in words]
            if [w for _, _, w in words] != _WORD_RE.findall(jobs[i].text.lower()):
                words = []  # festival tokenised differently ("enslav'd", letter strings): no word times
            out.append((audio, sr, phones, words))
        return out
