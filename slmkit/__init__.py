"""slmkit: train, evaluate, export and serve small reasoning language models in one pipeline."""

__version__ = "0.1.0"
