"""Building blocks of the codec family: front end + iSTFT head, ConvNeXt backbone, per-variant bottlenecks."""
