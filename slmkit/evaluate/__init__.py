"""Evaluation: benchmarks, scorers and the sandbox that runs model-written code."""
