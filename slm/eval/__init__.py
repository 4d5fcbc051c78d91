"""Evaluation suite (EVAL.md): codec reconstruction tables, semantic unit quality and probes,
speech-LM task metrics. Entry point: ``slm eval``; judges live in ``adapters.judges``."""
