"""One shared phone inventory for every synthesizer of the corpus, and the tables that map into it.

Inventory: the 39 ARPAbet phonemes of the CMU Pronouncing Dictionary, without stress, lower case,
plus ``sil`` for every pause/silence (40 labels)::

    vowels      aa ae ah ao aw ay eh er ey ih iy ow oy uh uw
    consonants  b ch d dh f g hh jh k l m n ng p r s sh t th v w y z zh
    silence     sil

Each synthesizer's own symbols are mapped *explicitly* (no guessing): espeak-ng phoneme mnemonics of
its English voices (en, en-us and the other English accents), flite's US phone set (cmu_us_*), and
festival's phone sets (``radio`` for kal/ked diphone, CMU lex for us_slt_hts). A few allophones that
ARPAbet-39 lacks are folded into their phoneme (flap ``dx`` -> ``t``, syllabic ``el``/``em``/``en``
-> ``l``/``m``/``n``, glottal stop -> ``t``, reduced vowels -> ``ah``/``ih``). espeak-ng's
zero-length modifiers (``;`` palatalisation) carry no sound of their own: they map to ``None`` and
are merged into the preceding phone. An unmapped symbol raises :class:`UnknownPhone`.
"""
from __future__ import annotations

VOWELS = ("aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw")
CONSONANTS = ("b", "ch", "d", "dh", "f", "g", "hh", "jh", "k", "l", "m", "n", "ng", "p", "r", "s", "sh", "t",
              "th", "v", "w", "y", "z", "zh")
SIL = "sil"
INVENTORY: tuple[str, ...] = VOWELS + CONSONANTS + (SIL,)
PHONE_TO_ID = {p: i for i, p in enumerate(INVENTORY)}


class UnknownPhone(KeyError):
    """A synthesizer produced a symbol that has no entry in its mapping table."""


# flite (cmu_us_slt/rms/awb/kal16) and festival (radio phoneset of kal/ked diphone, CMU lex of
# us_slt_hts) share the CMU/ARPAbet names; the extras are allophones and silences.
_ARPA_IDENTITY = {p: p for p in VOWELS + CONSONANTS}
FLITE_MAP: dict[str, str | None] = {
    **_ARPA_IDENTITY, "pau": SIL, "h#": SIL, "brth": SIL, "ssil": SIL,
    "ax": "ah", "axr": "er", "ix": "ih", "ux": "uw", "el": "l", "em": "m", "en": "n", "nx": "n",
    "dx": "t", "hv": "hh",
}
FESTIVAL_MAP: dict[str, str | None] = {**FLITE_MAP, "#": SIL, "sp": SIL}

ESPEAK_MAP: dict[str, str | None] = {
    # pauses and boundaries
    "_": SIL, "_:": SIL, "_!": SIL, "_|": SIL, "_^_": SIL, "_#": SIL, "||": SIL, "|": None,
    ";": None,  # palatalisation modifier, no duration of its own
    # consonants
    "p": "p", "b": "b", "t": "t", "d": "d", "k": "k", "g": "g", "f": "f", "v": "v", "T": "th", "D": "dh",
    "s": "s", "z": "z", "S": "sh", "Z": "zh", "h": "hh", "m": "m", "n": "n", "N": "ng", "l": "l", "r": "r",
    "w": "w", "j": "y", "tS": "ch", "dZ": "jh",
    "t#": "t", "t2": "t", "t[": "t", "d#": "d", "d[": "d", "?": "t", "x": "k", "r-": "r", "r/": "r",
    "w#": "w", "n-": "n", "l/": "l", "l#": "l", "z/": "z", "s2": "s", "z#": "z", "m-": "m", "hw": "w",
    "@L": "l", "@r": "er", "@N": "ng",
    # vowels
    "@": "ah", "@-": "ah", "@2": "ah", "@5": "ah", "@U": "ow", "V": "ah", "VR": "ah", "a": "ae", "a#": "ah",
    "aa": "ae", "a2": "ah", "A:": "aa", "A@": "aa", "A": "aa", "0": "aa", "0#": "aa", "E": "eh", "E2": "eh",
    "E@": "eh", "e@": "eh", "e": "eh", "eI": "ey", "eI@": "ey", "I": "ih", "I#": "ih", "I2": "ih",
    "I2#": "ih", "IR": "ih", "i": "iy", "i:": "iy", "i@": "ih", "i@3": "ih", "O": "ao", "O:": "ao",
    "O@": "ao", "O2": "ao", "o@": "ao", "o": "ow", "oU": "ow", "oU#": "ow", "OI": "oy", "U": "uh",
    "U@": "uh", "u": "uw", "u:": "uw", "u@": "uh", "aI": "ay", "aI@": "ay", "aI2": "ay", "aI3": "ay",
    "aI@3": "ay", "aU": "aw", "aU@": "aw", "3": "er", "3:": "er", "3:r": "er",
}

TABLES = {"espeak": ESPEAK_MAP, "flite": FLITE_MAP, "festival": FESTIVAL_MAP}


def to_inventory(symbol: str, synth: str) -> str | None:
    """Map one synthesizer symbol to the shared inventory (``None``: merge into the previous phone)."""
    table = TABLES.get(synth)
    if table is None:
        raise ValueError(f"unknown synthesizer {synth!r}: expected one of {sorted(TABLES)}")
    key = symbol if synth == "espeak" else symbol.lower()
    if key not in table:
        raise UnknownPhone(f"{synth} symbol {symbol!r} has no entry in the {synth} phone table")
    return table[key]


def segments_from_starts(starts: list[tuple[float, str]], end: float, synth: str) -> list[list]:
    """``[(start_s, symbol), ...]`` -> ``[[start_s, end_s, label], ...]`` covering ``[0, end]``.

    Leading audio before the first event is ``sil``; modifiers (``None``) and zero-length segments are
    merged into their neighbour; consecutive ``sil`` segments are joined.
    """
    segs: list[list] = []
    for i, (t0, sym) in enumerate(starts):
        t1 = starts[i + 1][0] if i + 1 < len(starts) else end
        lab = to_inventory(sym, synth)
        if lab is None:
            if segs:
                segs[-1][1] = max(segs[-1][1], t1)
            continue
        segs.append([t0, t1, lab])
    return finalize(segs, end)


def segments_from_ends(ends: list[tuple[str, float]], end: float, synth: str) -> list[list]:
    """``[(symbol, end_s), ...]`` (flite ``-psdur`` / festival Segment) -> segments covering ``[0, end]``."""
    segs: list[list] = []
    t = 0.0
    for sym, t1 in ends:
        lab = to_inventory(sym, synth)
        if lab is None:
            if segs:
                segs[-1][1] = max(segs[-1][1], t1)
        else:
            segs.append([t, t1, lab])
        t = t1
    return finalize(segs, end)


def finalize(segs: list[list], end: float) -> list[list]:
    """Clip to ``[0, end]``, pad edges with ``sil``, drop empty segments, merge adjacent ``sil``.

    The last segment always ends exactly at ``end`` (the audio length): trailing audio past the last
    phone becomes ``sil``, a phone running past the audio is cut.
    """
    out: list[list] = []
    for t0, t1, lab in segs:
        t0, t1 = max(0.0, min(t0, end)), max(0.0, min(t1, end))
        if out:
            t0 = out[-1][1]
        elif t0 > 0:
            out.append([0.0, t0, SIL])
        if t1 - t0 <= 1e-6:
            continue
        if out and out[-1][2] == lab == SIL:
            out[-1][1] = t1
        else:
            out.append([t0, t1, lab])
    if not out:
        return [[0.0, end, SIL]]
    if out[-1][1] < end:
        if out[-1][2] == SIL:
            out[-1][1] = end
        else:
            out.append([out[-1][1], end, SIL])
    if out[0][2] != SIL:  # speech from sample 0: give the edge a short sil so both edges are sil
        cut = min(0.005, (out[0][1] - out[0][0]) / 2)
        out[0][0] = cut
        out.insert(0, [0.0, cut, SIL])
    return [[round(a, 5), round(b, 5), lab] for a, b, lab in out]
