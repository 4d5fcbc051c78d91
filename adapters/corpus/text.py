"""English sentences for the synthetic corpus, from the Debian ``fortunes`` packages.

Every fortune file under ``/usr/share/games/fortunes`` is read (``%``-separated entries), attribution
lines (``-- Author``) and ASCII art are dropped, entries are split into sentences, and each sentence is
*normalised so the transcript matches what is spoken*: numbers become words (cardinals, ordinals,
years, money, percent), common abbreviations are expanded (``Mr.`` -> ``mister``), symbols are
spelled out (``&`` -> ``and``). Sentences with other odd characters, fewer than 3 or more than 30
words are dropped. Splits are fixed per *sentence* by hashing its normalised text, so they never change
when the sentence list grows.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
MIN_WORDS, MAX_WORDS = 3, 30
# Held-out sentence fractions (by hash), see `sentence_split`.
VALID_FRACTION, TEST_FRACTION = 0.05, 0.05


@dataclass(frozen=True)
class Sentence:
    id: str  # stable id: first 12 hex digits of sha1(normalised text)
    text: str  # normalised, lower-case, as spoken: letters, apostrophes, spaces, light punctuation
    raw_text: str  # the cleaned source sentence before normalisation
    split: str  # "train" | "valid" | "test"


ABBREVIATIONS = {
    "mr.": "mister", "mrs.": "missus", "ms.": "miz", "dr.": "doctor", "st.": "saint", "jr.": "junior",
    "sr.": "senior", "prof.": "professor", "gen.": "general", "col.": "colonel", "capt.": "captain",
    "lt.": "lieutenant", "sgt.": "sergeant", "rev.": "reverend", "gov.": "governor", "sen.": "senator",
    "rep.": "representative", "mt.": "mount", "ft.": "feet", "etc.": "et cetera", "vs.": "versus",
    "e.g.": "for example", "i.e.": "that is", "a.m.": "a m", "p.m.": "p m", "no.": "number",
    "approx.": "approximately", "dept.": "department", "jan.": "january", "feb.": "february",
    "aug.": "august", "sept.": "september", "oct.": "october", "nov.": "november", "dec.": "december",
    "u.s.": "u s", "u.s.a.": "u s a", "ave.": "avenue", "inc.": "incorporated", "co.": "company",
}
SYMBOLS = {"&": " and ", "%": " percent ", "+": " plus ", "=": " equals ", "@": " at ", "#": " number "}
# Anything else outside this set marks a sentence we would not know how to read aloud.
_ALLOWED = re.compile(r"^[a-z' ,.;:!?\-]+$")
_ABBR_RE = re.compile(r"(?<![A-Za-z])(" + "|".join(re.escape(a) for a in sorted(ABBREVIATIONS, key=len,
                                                                                 reverse=True)) + ")",
                      re.IGNORECASE)
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def _num(n: str, to: str = "cardinal") -> str:
    from num2words import num2words  # a maintained library beats a hand-written number speller

    words = num2words(int(n) if to != "cardinal" or "." not in n else float(n), to=to)
    return " " + words.replace(",", "") + " "


def _money(m: re.Match) -> str:
    dollars, cents = m.group(1).replace(",", ""), m.group(2)
    out = _num(dollars) + (" dollar " if dollars == "1" else " dollars ")
    if cents and int(cents):
        out += " and " + _num(str(int(cents))) + (" cent " if int(cents) == 1 else " cents ")
    return out


def normalise(text: str) -> str:
    """Turn written English into the words a speaker says (lower case, light punctuation kept)."""
    t = text.replace("\u2019", "'").replace("`", "'").replace("''", '"')
    t = _ABBR_RE.sub(lambda m: " " + ABBREVIATIONS[m.group(1).lower()] + " ", t)
    t = re.sub(r"\$(\d[\d,]*)(?:\.(\d\d))?\b", _money, t)
    t = re.sub(r"(\d+(?:\.\d+)?)\s*%", lambda m: _num(m.group(1)) + " percent ", t)
    t = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: _num(m.group(1), "ordinal"), t, flags=re.IGNORECASE)
    t = re.sub(r"\b(1[1-9]\d\d|20\d\d)s\b", lambda m: _num(m.group(1), "year").rstrip() + "s ", t)
    t = re.sub(r"\b(1[1-9]\d\d|20\d\d)\b", lambda m: _num(m.group(1), "year"), t)
    t = re.sub(r"\b\d{1,3}(?:,\d{3})+\b", lambda m: m.group(0).replace(",", ""), t)
    t = re.sub(r"\b\d+\.\d+\b", lambda m: _num(m.group(0)), t)
    t = re.sub(r"\b\d+\b", lambda m: _num(m.group(0)), t)
    for s, w in SYMBOLS.items():
        t = t.replace(s, w)
    t = t.replace('"', " ").replace("(", ", ").replace(")", ", ").replace("--", ", ")
    t = t.lower().replace("-", " ") if re.search(r"\d", text) else t.lower()
    t = re.sub(r"\s+([,.;:!?])", r"\1", t)
    t = re.sub(r"([,;:])[,;:\s]*", r"\1 ", t)
    t = re.sub(r"^[\s,;:]+", "", t)
    return re.sub(r"\s+", " ", t).strip()


def split_sentences(entry: str) -> list[str]:
    """One fortune entry -> sentences (attributions and indented verse/code lines dropped)."""
    lines = []
    for line in entry.splitlines():
        s = line.strip()
        if not s or s.startswith(("--", "- ")) or "\b" in line:
            continue
        if len(line) - len(line.lstrip()) >= 8:  # deeply indented: art, code, attributions
            continue
        lines.append(s)
    text = re.sub(r"\s+", " ", " ".join(lines))
    return [p.strip() for p in _SENT_END.split(text) if p.strip()]


def clean(raw: str) -> str | None:
    """Return the normalised sentence, or None if it cannot be read aloud reliably."""
    if re.search(r"[^\x20-\x7e]|[<>{}\[\]|\\^~_*/]|https?:|www\.", raw):
        return None
    if re.search(r"\b[A-Z]{2,}\b", raw) and not raw.isupper():  # acronyms: spoken unpredictably
        return None
    if re.search(r"\d[^\d\s,.%$)]|[^\s$(]\d", raw.replace("st ", " ").replace("nd ", " ")) and (
            not re.fullmatch(r"[^\d]*((\$?\d[\d,.]*%?|\d+(st|nd|rd|th)s?|\d{4}s)[^\d]*)*", raw)):
        return None
    try:
        t = normalise(raw)
    except (ValueError, OverflowError, AttributeError):
        return None
    # "news.groups", "d.c." or "ph.d." are read as "dot" or letter names: not what the text says
    if not _ALLOWED.match(t) or not re.search(r"[.!?]$", t) or re.search(r"[a-z][.,:;!?][a-z']", t):
        return None
    n = len(t.split())
    if n < MIN_WORDS or n > MAX_WORDS or re.search(r"(^|\s)'|'(\s|$)|[,.;:!?-]{2,}", t):
        return None
    return t


def sentence_split(text: str) -> str:
    """Fixed split of a sentence by hashing its normalised text: ~90% train, 5% valid, 5% test."""
    h = int(hashlib.sha1(("split:" + text).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < TEST_FRACTION else "valid" if h < TEST_FRACTION + VALID_FRACTION else "train"


def fortune_files(root: Path = FORTUNES_DIR) -> list[Path]:
    """Every fortune text file (the ``.dat`` indexes and ``.u8`` links are skipped)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                   and p.suffix not in (".dat", ".u8"))
    if not files:
        raise FileNotFoundError(f"no fortune files under {root}: expected the Debian 'fortunes' packages")
    return files


@lru_cache(maxsize=2)
def load_sentences(root: str = str(FORTUNES_DIR)) -> tuple[Sentence, ...]:
    """All distinct clean sentences, sorted by id (deterministic for a given set of packages)."""
    seen: dict[str, Sentence] = {}
    for f in fortune_files(Path(root)):
        body = f.read_bytes().decode("latin-1")
        for entry in body.split("\n%\n"):
            for raw in split_sentences(entry):
                t = clean(raw)
                if t is None or t in seen:
                    continue
                sid = hashlib.sha1(t.encode()).hexdigest()[:12]
                seen[t] = Sentence(id=sid, text=t, raw_text=raw, split=sentence_split(t))
    return tuple(sorted(seen.values(), key=lambda s: s.id))
