"""Code that more than one LongAlign script needs. Each module is small and imported directly."""

IGNORE_INDEX = -100  # label of a token that is not a target (PyTorch's cross-entropy default)
