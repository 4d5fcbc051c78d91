"""The speech LM: token layout, templates, acoustic head, training, generation, pipelines."""
