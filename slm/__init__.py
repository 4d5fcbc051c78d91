"""The speech LM: token layout, templates, acoustic head, training, generation, pipelines."""

# Before torch loads libgomp, which reads them once: how OpenMP threads wait (codec.runtime). A choice
# made by the user wins.
from codec.runtime import omp_defaults  # codec/__init__ applies them first

omp_defaults()

# SpeechPipeline.asr's methods (here, not in slm.pipeline, so that the CLI's parser and the demo name them without
# loading the pipeline), and those that need the model's CTC reader (slm.ctc_reader)
ASR_METHODS = ("fused", "joint", "lm", "ctc")
READER_ASR_METHODS = ("fused", "joint", "ctc")
