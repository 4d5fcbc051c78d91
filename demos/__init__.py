"""Gradio demo over the slm pipeline facade."""

# Before torch loads libgomp, which reads them once: how OpenMP threads wait (codec.runtime). A choice
# made by the user wins.
from codec.runtime import omp_defaults  # codec/__init__ applies them first

omp_defaults()
