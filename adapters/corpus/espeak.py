"""espeak-ng through its C API (ctypes on ``libespeak-ng.so.1``) with exact phoneme/word events.

The command line cannot give timings, but the library reports, in synchronous mode with
``espeakINITIALIZE_PHONEME_EVENTS``, one event per phoneme and per word carrying the *sample
position* in the output. espeak's state is global to the process, so each worker process calls
:func:`init` once (``build.py`` does it in its pool initializer); do not share across threads.
"""
from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .phones import segments_from_starts

LIB_NAME = "libespeak-ng.so.1"
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_PHONEME = 0, 1, 7
POS_CHARACTER, CHARS_UTF8 = 1, 1
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4

# Accents (espeak-ng voice names) and voice variants used as speakers; only those installed are used.
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt4", "croak", "whisper")


class _Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass
class EspeakResult:
    audio: np.ndarray  # int16 [N] at `sample_rate`
    sample_rate: int
    phonemes: list[tuple[int, str]]  # (start sample, espeak mnemonic), in order
    words: list[tuple[int, int, int]]  # (start sample, text position (0-based), length in chars)


class _State:
    lib: ctypes.CDLL | None = None
    sample_rate = 0
    chunks: ClassVar[list[np.ndarray]] = []
    events: ClassVar[list[tuple[int, int, str, int, int]]] = []
    callback = None


def init() -> int:
    """Initialise espeak-ng in this process (idempotent); returns its sample rate (22050)."""
    if _State.lib is not None:
        return _State.sample_rate
    lib = ctypes.CDLL(LIB_NAME)
    lib.espeak_Initialize.restype = ctypes.c_int
    sr = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, INITIALIZE_PHONEME_EVENTS)
    if sr <= 0:
        raise RuntimeError(f"espeak_Initialize failed: expected a sample rate, got {sr}")

    def _cb(wav, n, events):  # runs inside espeak_Synth; copies samples and events out
        if n > 0 and wav:
            _State.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == EVENT_PHONEME:
                _State.events.append((EVENT_PHONEME, e.sample, e.id.string.decode("ascii", "replace"), 0, 0))
            elif e.type == EVENT_WORD:
                _State.events.append((EVENT_WORD, e.sample, "", e.text_position, e.length))
            i += 1
        return 0

    _State.callback = _CALLBACK(_cb)  # keep a reference: ctypes callbacks die with their wrapper
    lib.espeak_SetSynthCallback(_State.callback)
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    _State.lib, _State.sample_rate = lib, sr
    return sr


def available_accents() -> list[str]:
    """The accents of ``ACCENTS`` this espeak-ng installation has (voice files under ``lang/gmw``)."""
    from glob import glob

    have = {os.path.basename(p).lower() for p in glob("/usr/lib/*/espeak-ng-data/lang/gmw/*")
            + glob("/usr/share/espeak-ng-data/lang/gmw/*")}
    return [a for a in ACCENTS if a in have] or ["en-us"]


def available_variants() -> list[str]:
    from glob import glob

    have = {os.path.basename(p) for p in glob("/usr/lib/*/espeak-ng-data/voices/!v/*")
            + glob("/usr/share/espeak-ng-data/voices/!v/*")}
    return [v for v in VARIANTS if v in have]


def synth(text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50) -> EspeakResult:
    """Synthesise ``text`` with ``voice`` (e.g. ``"en-gb+f3"``); words/phonemes carry sample positions.

    espeak-ng keeps wave-generator state (pitch flutter phase, ...) across calls, so the same text
    comes out a few samples different depending on what was spoken before. To make every utterance
    a pure function of its inputs, synthesis runs in a child forked from the freshly initialised
    process (copy-on-write: a few ms), which returns the result through a pipe.
    """
    if _Zygote.pid:
        return _Zygote.request((text, voice, rate, pitch, pitch_range))
    init()
    if not hasattr(os, "fork"):
        return _synth_here(text, voice, rate, pitch, pitch_range)
    import pickle

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: synthesise from the pristine state, send, exit without cleanup handlers
        code = 0
        try:
            os.close(rfd)
            try:
                payload = pickle.dumps(("ok", _synth_here(text, voice, rate, pitch, pitch_range)))
            except Exception as e:  # noqa: BLE001 - re-raised in the parent
                payload = pickle.dumps(("err", e))
            with os.fdopen(wfd, "wb") as f:
                f.write(payload)
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"espeak-ng child process died synthesising {text!r}")
    status, value = pickle.loads(data)
    if status == "err":
        raise value
    return value


class _Zygote:
    """A small process forked *before* torch is imported that forks once per utterance.

    Forking a worker that holds torch costs ~50 ms of page-table copying per utterance; forking this
    lean process costs a few ms. Requests and results travel as length-prefixed pickles over pipes.
    """

    pid = 0
    req_w = res_r = -1

    @classmethod
    def request(cls, args: tuple) -> EspeakResult:
        import pickle

        _send(cls.req_w, pickle.dumps(args))
        status, value = pickle.loads(_recv(cls.res_r))
        if status == "err":
            raise value
        return value


def _send(fd: int, data: bytes) -> None:
    os.write(fd, len(data).to_bytes(8, "little"))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int) -> bytes:
    def exact(n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            b = os.read(fd, n - got)
            if not b:
                raise EOFError("espeak-ng helper process closed its pipe")
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    return exact(int.from_bytes(exact(8), "little"))


def start_zygote() -> None:
    """Fork the helper (call early, before heavy imports); later `synth` calls go through it."""
    if _Zygote.pid or not hasattr(os, "fork"):
        return
    import pickle

    req_r, req_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(req_r)
        os.close(res_w)
        _Zygote.pid, _Zygote.req_w, _Zygote.res_r = pid, req_w, res_r
        return
    os.close(req_w)
    os.close(res_r)
    try:
        init()
        while True:
            try:
                args = pickle.loads(_recv(req_r))
            except EOFError:
                break
            child = os.fork()
            if child == 0:
                try:
                    payload = pickle.dumps(("ok", _synth_here(*args)))
                except Exception as e:  # noqa: BLE001 - re-raised in the requesting process
                    payload = pickle.dumps(("err", e))
                _send(res_w, payload)
                os._exit(0)
            os.waitpid(child, 0)
    finally:
        os._exit(0)


def _synth_here(text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> EspeakResult:
    sr = init()
    lib = _State.lib
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"espeak-ng: unknown voice {voice!r} (expected e.g. 'en-us+m3')")
    for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range),
                         (PARAM_VOLUME, 100)):
        lib.espeak_SetParameter(param, int(value), 0)
    _State.chunks, _State.events = [], []
    data = text.encode("utf-8")
    err = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
    if err != 0:
        raise RuntimeError(f"espeak_Synth failed with code {err} for {text!r}")
    lib.espeak_Synchronize()
    audio = np.concatenate(_State.chunks) if _State.chunks else np.zeros(0, np.int16)
    phonemes = [(s, name) for kind, s, name, _, _ in _State.events if kind == EVENT_PHONEME]
    # text_position is 1-based in characters of the input
    words = [(s, pos - 1, ln) for kind, s, _, pos, ln in _State.events if kind == EVENT_WORD]
    return EspeakResult(audio=audio, sample_rate=sr, phonemes=phonemes, words=words)


_WORD_RE = re.compile(r"[a-z']+")


def synth_aligned(text: str, voice: str, rate: int = 175, pitch: int = 50
                  ) -> tuple[np.ndarray, int, list[list], list[list]]:
    """Returns (int16 audio, sample rate, phones [[s, e, label]], words [[s, e, word]]) in seconds.

    Each word event is matched to the text word at (or just after) its ``text_position`` (which can
    point at the space before a word after a sentence end). espeak-ng speaks some short words
    together with their neighbour under one event ("to be", "self destruct"): such a group becomes
    one entry whose word field holds the words joined by a space. A word ends where its last
    non-silent phone ends.
    """
    r = synth(text, voice, rate=rate, pitch=pitch)
    sr, dur = r.sample_rate, len(r.audio) / r.sample_rate
    phones = segments_from_starts([(s / sr, p) for s, p in r.phonemes], dur, "espeak")
    spans = [(m.start(), m.end(), m.group(0)) for m in _WORD_RE.finditer(text.lower())]
    first_of: dict[int, float] = {}  # text word index -> start time of the event that begins there
    for sample, pos, _ in r.words:
        k = next((i for i, (_, e, _) in enumerate(spans) if e > pos), None)
        if k is not None and k not in first_of and (not first_of or k > max(first_of)):
            first_of[k] = sample / sr
    if not first_of:
        return r.audio, sr, phones, []
    heads = sorted(first_of)
    heads[0] = 0  # words before the first event are spoken with it
    times = [first_of[k] if k in first_of else first_of[min(first_of)] for k in heads] + [dur]
    words: list[list] = []
    for g, k in enumerate(heads):
        stop = heads[g + 1] if g + 1 < len(heads) else len(spans)
        t0, t1 = times[g], times[g + 1]
        inside = [p for p in phones if p[2] != "sil" and p[0] >= t0 - 1e-4 and p[1] <= t1 + 1e-4]
        if inside:
            t0, t1 = max(t0, inside[0][0]), inside[-1][1]
        words.append([round(t0, 5), round(t1, 5), " ".join(w for _, _, w in spans[k:stop])])
    return r.audio, sr, phones, words
