"""Shared test settings: one torch thread, deterministic seeds, no hub access."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Seed every test, and undo a thread count set by a CLI entry point (``slm --threads``) so that
    no test's numerics depend on which tests ran before it."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


TINY_READER = {"dim": 32, "layers": 1, "heads": 2, "ff_mult": 2}  # a tiny slm.ctc_reader.ReaderConfig


@pytest.fixture(scope="module")
def pipe_with_reader(tmp_path_factory):
    """A tiny trained speech-LM dir with a (random) tiny CTC reader, and its pipeline; asr_method joint."""
    import json

    from slm.ctc_reader import CTCReader, ReaderConfig
    from slm.pipeline import SpeechPipeline
    from slm.train import train
    from tests.test_slm_helpers import tiny_train_config

    tmp = tmp_path_factory.mktemp("joint")
    final = train(tiny_train_config(tmp, steps=2), progress=False)
    n = SpeechPipeline.from_pretrained(final).layout.n_semantic
    torch.manual_seed(0)
    CTCReader(ReaderConfig(n_codes=n, **TINY_READER)).save_pretrained(final / "ctc_reader")
    cfg = json.loads((final / "slm_config.json").read_text())
    (final / "slm_config.json").write_text(json.dumps({**cfg, "asr_method": "joint"}))  # what --install --method writes
    return final, SpeechPipeline.from_pretrained(final)
