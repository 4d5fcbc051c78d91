"""The speech LM: token layout, templates, acoustic head, training, generation, pipelines."""

# Before torch loads libgomp, which reads them once: how OpenMP threads wait (codec.runtime). A choice
# made by the user wins.
from codec.runtime import omp_defaults  # codec/__init__ applies them first

omp_defaults()

# SpeechPipeline.asr's methods (here, not in slm.pipeline, so that the CLI's parser and the demo name them without
# loading the pipeline), and those that need the model's CTC reader (slm.ctc_reader)
ASR_METHODS = ("fused", "joint", "lm", "ctc")
READER_ASR_METHODS = ("fused", "joint", "ctc")

# Seeds are non-negative 64-bit integers (torch.Generator.manual_seed takes them signed); here, not in slm.generate,
# so that the CLI's parser checks --seed without loading torch
SEED_MAX = 2**63 - 1


def check_seed(seed) -> int:
    """``seed`` as an int in ``0..SEED_MAX``, else a clear error (torch's own is "Overflow when unpacking long")."""
    import operator

    try:
        seed = operator.index(seed)  # an int or a numpy integer; not a float or a string
    except TypeError:
        raise ValueError(f"seed must be a whole number, got {seed!r}") from None
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed must be in 0..2**63-1, got {seed}")
    return seed
