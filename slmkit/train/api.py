"""Python entry point: `train(config, run_dir, **overrides) -> summary dict` (used by `slmkit demo`).

Overrides are dotted keys with `__` or `.` separators, e.g. `train(cfg, out, train__steps=50)` or
`train(cfg, out, overrides={"tokenizer.path": tok_dir, "model.vocab_size": 1024})`.
"""

from __future__ import annotations

from pathlib import Path

from slmkit.train.config import load_config


def train(config: dict | str | Path, run_dir: str | Path, *, resume: bool | str | Path = False,
          overrides: dict | None = None, stop_after: int | None = None, on_step=None, **kw) -> dict:
    """Run a training config; returns final metrics: losses, final_loss, tokens_per_s, checkpoint,
    milestones (name -> path), heldout (when eval.synthetic_heldout > 0), ..."""
    from slmkit.train.trainer import run

    merged = dict(overrides or {})
    merged.update({k.replace("__", "."): v for k, v in kw.items()})
    cfg, _ = load_config(config, merged)
    return run(cfg, Path(run_dir), resume=resume, stop_after=stop_after, on_step=on_step)


def preset_path(name: str) -> Path:
    """The recipe `slmkit/train/recipes/<name>.yaml` shipped inside the package (e.g. 'nano-demo')."""
    from slmkit.train.config import recipe_path

    return recipe_path(name)


def demo_config(tokenizer_dir: str | Path | None = None, quick: bool = False, vocab_size: int | str = "auto",
                steps: int | None = None) -> dict:
    """The `slmkit demo` training config (recipe nano-demo) pointed at the caller's tokenizer.

    quick: a seconds-long smoke version (same recipe: WSD + AdamW→Muon at decay, few steps).
    steps: override the step count (700 ≈ 3 min on 2 idle cores, held-out ≈ trivial baseline;
    2100 ≈ 3x longer, held-out ≈ 2x baseline — see the YAML's notes).
    The demo scores held-out problems itself, so the trainer's own held-out eval is off here.
    """
    import yaml

    path = preset_path("nano-demo")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["_config_dir"] = str(path.parent)
    if tokenizer_dir is not None:
        cfg["tokenizer"] = {"path": str(tokenizer_dir)}
    cfg["model"]["vocab_size"] = vocab_size
    cfg["eval"] = {"synthetic_heldout": 0}
    if steps is not None:
        cfg["train"]["steps"] = int(steps)
    if quick:
        cfg["train"].update(steps=40, batch_size=8, seq_len=128)
        cfg["data"]["sources"]["synthetic"]["docs"] = 4000
        cfg["data"]["sources"]["synthetic_sft"]["docs"] = 1000
        cfg["checkpoint"]["milestones"] = ["stable-end"]
    return cfg
