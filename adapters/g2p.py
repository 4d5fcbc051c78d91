"""Grapheme-to-phoneme for the phone-bridged aligned TTS form: espeak-ng's own letter-to-sound rules and
lexicon (``espeak_TextToPhonemes`` through the C API, no audio made), mapped to the corpus' shared
ARPAbet-39 inventory (:mod:`adapters.corpus.phones`) that the training phones come in.

Each word is phonemised on its own (a lexicon pronunciation, no cross-word effects), and the result is
cached per (voice, word). espeak-ng keeps global state, so calls are serialised by a lock.
"""
from __future__ import annotations

import ctypes
import threading
from functools import lru_cache

from adapters.corpus.phones import SIL, UnknownPhone, to_inventory

DEFAULT_VOICE = "en-us"
_STRESS = "',%="  # stress marks espeak writes before a syllable's vowel
_LOCK = threading.Lock()
_VOICE: list[str] = [""]


def _lib():
    from adapters.corpus import espeak

    try:
        espeak.init()
    except OSError as e:
        raise RuntimeError(f"phonemising needs espeak-ng's library ({espeak.LIB_NAME}): {e}; install the "
                           "espeak-ng package (scripts/setup.sh does)") from None
    lib = espeak._State.lib
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
    return lib


def _symbols(name: str) -> list[str]:
    """One espeak phoneme name -> inventory labels ([] for a pause or a modifier)."""
    name = name.strip(_STRESS)
    if not name or name.startswith("_"):
        return []
    try:
        p = to_inventory(name, "espeak")
    except UnknownPhone:
        p = to_inventory(name.rstrip(":"), "espeak")  # a lengthened form the tables lack: its short phoneme
    return [] if p is None or p == SIL else [p]


@lru_cache(maxsize=65536)
def _word(word: str, voice: str) -> tuple[str, ...]:
    lib = _lib()
    if _VOICE[0] != voice:
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        _VOICE[0] = voice
    buf = ctypes.c_char_p(word.encode("utf-8"))
    names: list[str] = []
    while buf.value:
        out = lib.espeak_TextToPhonemes(ctypes.byref(buf), 1, ord(" ") << 8)  # UTF-8 in, names space-separated
        if out is None:
            break
        names += out.decode("ascii", "replace").split()
    return tuple(p for n in names for p in _symbols(n))


def phonemize(words: list[str], voice: str = DEFAULT_VOICE) -> list[list[str]]:
    """ARPAbet-39 phones (lower case, no stress, no ``sil``) of each word; a word espeak gives no phones
    for gets ``[]``."""
    if isinstance(words, str):
        raise TypeError("phonemize takes a list of words, not a string")
    with _LOCK:
        return [list(_word(str(w).strip().lower(), voice)) if str(w).strip() else [] for w in words]
