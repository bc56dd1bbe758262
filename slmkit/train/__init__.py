"""Reproduction trainer: data mixtures, WSD, AdamW→Muon at decay, FP8, µP tooling, exact resume, torchrun.

Entry points: `slmkit.train.api.train(config, run_dir, ...)` and the CLI commands registered by
`slmkit.train.cli.add_commands`.
"""
