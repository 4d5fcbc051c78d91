"""espeak-ng G2P for the phone-bridged aligned TTS form: the corpus' ARPAbet-39 inventory, per word."""
import pytest

from adapters.corpus.phones import INVENTORY, SIL

g2p = pytest.importorskip("adapters.g2p")


def test_phonemize_gives_inventory_phones_per_word():
    out = g2p.phonemize(["hello", "World", "the", "", "42", "xyzzy"])
    assert len(out) == 6 and out[3] == []
    assert out[0] == ["hh", "ah", "l", "ow"]
    assert out[1][0] == "w" and out[1][-1] == "d" and out[2][0] == "dh"
    assert all(p in INVENTORY and p != SIL for ph in out for p in ph)
    assert len(out[4]) > 4 and out[5]  # numbers are read out; a non-word is spelled by letter-to-sound rules
    assert g2p.phonemize(["hello"]) == [out[0]]  # cached and repeatable
    with pytest.raises(TypeError, match="list of words"):
        g2p.phonemize("hello world")


def test_phonemize_unknown_voice_is_a_clear_error():
    with pytest.raises(ValueError, match="no voice"):
        g2p.phonemize(["hello"], voice="xx-nonexistent")
