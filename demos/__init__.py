"""Gradio demo over the slm pipeline facade."""
