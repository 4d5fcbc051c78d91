"""Codec training: config, step-indexed batches, the accelerate GAN loop, checkpoints, teacher caches."""
from codec.train.config import CodecTrainConfig

__all__ = ["CodecTrainConfig", "train"]


def train(*args, **kwargs):
    """``codec.train.loop.train`` (imported lazily: accelerate is a training-only dependency)."""
    from codec.train.loop import train as _train

    return _train(*args, **kwargs)
