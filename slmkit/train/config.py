"""Training config: one YAML mapping, defaults merged in, `--set a.b=value` overrides, validated.

The config is kept as a plain nested dict (it is saved verbatim into every checkpoint so a resume
or a branch knows exactly what ran); `validate` turns every mistake into a one-line SlmkitError
that names the file, the dotted field and the bad value.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda
    "model": {"preset": "nano"},
    # tokenizer: {path: DIR} or {path: DIR, train_bpe: {vocab_size: 1024, synthetic_docs: 4000}}
    "tokenizer": {"path": None, "train_bpe": None},
    "data": {
        "sources": {"synthetic": {"type": "synthetic", "docs": 20000, "seed": 0}},
        "mix": {"stable": {"synthetic": 1.0}},  # phase -> {source: weight}; phases: stable, decay, long
        "cache_dir": None,  # where auto-prepared shards go (default RUN_DIR/data)
        "align": "token",  # token: windows start anywhere; doc: windows start at a document start
    },
    "train": {
        "steps": 100,
        "batch_size": 8,  # global sequences per optimizer step
        "seq_len": 128,
        "grad_accum": 1,
        "grad_clip": 1.0,
        "precision": "fp32",  # fp32 | bf16 | fp8
        "compile": "auto",  # auto: on CUDA, and on CPU for runs of >= 200 steps with a C++ compiler
        "max_bad_steps": 5,  # consecutive non-finite steps before stopping
        "threads": "auto",  # CPU threads: auto = free cores
    },
    "schedule": {
        "type": "wsd",  # wsd | cosine | constant
        "lr": 1e-2,
        "warmup": 0.05,  # fraction of steps (<1) or a step count (>=1)
        "decay": 0.2,  # WSD decay length: fraction or steps
        "decay_shape": "1-sqrt",  # linear | cosine | 1-sqrt | exponential
        "min_lr_ratio": 0.0,  # floor, as a fraction of lr
    },
    "optimizer": {
        "stable": "adamw",
        "decay": "adamw",  # adamw | muon (hidden matrices go to Muon at the first decay step)
        "betas": [0.9, 0.95],
        "eps": 1e-8,
        "weight_decay": 0.1,
        "fused": "auto",
        "muon": {"momentum": 0.95, "nesterov": True, "ns_steps": 5, "adjust_lr_fn": "match_rms_adamw",
                 "mup_lr_scale": True, "ns_dtype": "auto"},
    },
    # Long-context extension stage (phase "long", after the schedule's steps; Xmodel-2.5 ends with one):
    # its own sequence length, RoPE base and LR; tokens per step kept (rows = batch_tokens / seq_len);
    # data from data.mix.long (default: the decay mix), windows inside one document unless align: token.
    "long_context": {"steps": 0, "seq_len": 512, "rope_theta": None, "batch_tokens": None, "lr": None,
                     "warmup": 0.1, "decay": 0.3, "align": "within_doc"},
    "fp8": {"backend": "auto", "min_dim": 256, "amax_history": 1},  # auto: torchao on CUDA, emulation on CPU
    # milestones: stable-end (first decay step), decay-end (first long-context step, when there is a stage)
    "checkpoint": {"every": 0, "keep_last": 2, "milestones": ["stable-end", "decay-end"], "final": True},
    "log": {"every": 10, "tensorboard": True, "plots": True, "progress": True},
    "eval": {"synthetic_heldout": 0, "max_new_tokens": 48, "every": 0},
    "distributed": {"strategy": "ddp"},  # ddp | fsdp (used under torchrun)
}

PRECISIONS = ("fp32", "bf16", "fp8")
SCHEDULES = ("wsd", "cosine", "constant")
SHAPES = ("linear", "cosine", "1-sqrt", "exponential")
OPTIMIZERS = ("adamw", "muon")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("sources", "mix", "model"):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    parts = [p for p in key.strip().split(".") if p]
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def apply_override(cfg: dict, assignment: str, source: str = "--set") -> None:
    """`a.b.c=value` (value parsed as YAML) into the nested dict."""
    if "=" not in assignment:
        raise SlmkitError(f"{source}: '{assignment}' must look like key.path=value")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise SlmkitError(f"{source}: '{assignment}' has an empty key")
    set_dotted(cfg, key, parse_value(raw))


def recipes() -> list[str]:
    """Names of the training recipes shipped as package data (slmkit/train/recipes/*.yaml)."""
    from importlib import resources

    return sorted(p.name[:-5] for p in resources.files("slmkit.train").joinpath("recipes").iterdir()
                  if p.name.endswith(".yaml"))


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe; found through importlib.resources so a wheel install has it too."""
    from importlib import resources

    path = Path(str(resources.files("slmkit.train").joinpath("recipes", f"{name}.yaml")))
    if not path.is_file():
        raise SlmkitError(f"unknown training recipe '{name}' (known: {', '.join(recipes())}; or a path to a YAML file)")
    return path


def load_config(config: dict | str | Path, overrides: list[str] | dict | None = None) -> tuple[dict, str]:
    """(validated config dict, source name for messages). `config`: a dict, a YAML path or a recipe name."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.exists() and len(path.parts) == 1 and (str(config) in recipes() or not path.suffix):
            path = recipe_path(str(config))  # a bare name ("xmodel2.5-1.3b" has a dot, so not by suffix)
        if not path.exists():
            raise SlmkitError(f"{path}: training config not found (shipped recipes: {', '.join(recipes())})")
        import yaml

        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise SlmkitError(f"{path}: cannot parse YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise SlmkitError(f"{path}: expected a mapping at the top level")
        source = str(path)
        raw.setdefault("_config_dir", str(path.parent.resolve()))
    elif isinstance(config, dict):
        raw, source = copy.deepcopy(config), "config"
    else:
        raise SlmkitError(f"training config must be a path or a dict, got {type(config).__name__}")
    cfg = deep_merge(DEFAULTS, raw)
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            set_dotted(cfg, key, value)
    else:
        for item in overrides or []:
            apply_override(cfg, item)
    validate(cfg, source)
    return cfg, source


def _num(cfg: dict, dotted: str, source: str, *, positive=False, nonneg=False, integer=False, lo=None, hi=None):
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    bad = isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node)
    if not bad and integer and not float(node).is_integer():
        bad = True
    if not bad and ((positive and node <= 0) or (nonneg and node < 0) or (lo is not None and node < lo)
                    or (hi is not None and node > hi)):
        bad = True
    if bad:
        what = "a positive" if positive else "a non-negative" if nonneg else "a"
        what += " integer" if integer else " number"
        if lo is not None or hi is not None:
            what += f" in [{lo}, {hi}]"
        raise SlmkitError(f"{source}: field '{dotted}'={node!r} must be {what}")
    return int(node) if integer else float(node)


def _choice(cfg: dict, dotted: str, options, source: str) -> str:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node not in options:
        raise SlmkitError(f"{source}: field '{dotted}'={node!r} must be one of {', '.join(map(str, options))}")
    return node


def validate(cfg: dict, source: str = "config") -> None:
    for section in ("model", "data", "train", "schedule", "optimizer", "fp8", "checkpoint", "log", "eval"):
        if not isinstance(cfg.get(section), dict):
            raise SlmkitError(f"{source}: field '{section}'={cfg.get(section)!r} must be a mapping")
    _num(cfg, "seed", source, nonneg=True, integer=True)
    for key in ("train.steps", "train.batch_size", "train.seq_len", "train.grad_accum", "train.max_bad_steps"):
        _num(cfg, key, source, positive=True, integer=True)
    _num(cfg, "train.grad_clip", source, nonneg=True)
    if cfg["train"]["batch_size"] % cfg["train"]["grad_accum"]:
        raise SlmkitError(f"{source}: field 'train.batch_size'={cfg['train']['batch_size']} must be divisible by "
                          f"train.grad_accum={cfg['train']['grad_accum']}")
    _choice(cfg, "train.precision", PRECISIONS, source)
    _choice(cfg, "schedule.type", SCHEDULES, source)
    _choice(cfg, "schedule.decay_shape", SHAPES, source)
    _num(cfg, "schedule.lr", source, positive=True)
    _num(cfg, "schedule.warmup", source, nonneg=True)
    _num(cfg, "schedule.decay", source, nonneg=True)
    _num(cfg, "schedule.min_lr_ratio", source, lo=0.0, hi=1.0)
    _choice(cfg, "optimizer.stable", ("adamw",), source)
    _choice(cfg, "optimizer.decay", OPTIMIZERS, source)
    _num(cfg, "optimizer.weight_decay", source, nonneg=True)
    _num(cfg, "optimizer.eps", source, positive=True)
    betas = cfg["optimizer"].get("betas")
    if (not isinstance(betas, (list, tuple)) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise SlmkitError(f"{source}: field 'optimizer.betas'={betas!r} must be two numbers in [0, 1)")
    _choice(cfg, "optimizer.muon.adjust_lr_fn", ("match_rms_adamw", "original"), source)
    _choice(cfg, "optimizer.muon.ns_dtype", ("auto", "fp32", "bf16"), source)
    _choice(cfg, "train.compile", (True, False, "auto"), source)
    _validate_long(cfg, source)
    _choice(cfg, "fp8.backend", ("auto", "emulate", "torchao", "te"), source)
    _num(cfg, "fp8.min_dim", source, nonneg=True, integer=True)
    _num(cfg, "fp8.amax_history", source, positive=True, integer=True)
    _num(cfg, "checkpoint.every", source, nonneg=True, integer=True)
    _num(cfg, "checkpoint.keep_last", source, nonneg=True, integer=True)
    _num(cfg, "log.every", source, positive=True, integer=True)
    _num(cfg, "eval.synthetic_heldout", source, nonneg=True, integer=True)
    _choice(cfg, "device", ("auto", "cpu", "cuda"), source)
    _choice(cfg, "data.align", ("token", "doc"), source)
    _choice(cfg, "distributed.strategy", ("ddp", "fsdp"), source)
    if cfg["distributed"]["strategy"] == "fsdp" and cfg["optimizer"]["decay"] == "muon":
        raise SlmkitError(f"{source}: field 'optimizer.decay'='muon' is not supported with distributed.strategy=fsdp "
                          "(Muon needs whole matrices; use ddp)")
    sources = cfg["data"].get("sources")
    if not isinstance(sources, dict) or not sources:
        raise SlmkitError(f"{source}: field 'data.sources' must be a non-empty mapping of name -> source spec")
    for name, spec in sources.items():
        if not isinstance(spec, dict) or spec.get("type") not in ("synthetic", "jsonl", "text", "prepared"):
            got = spec.get("type") if isinstance(spec, dict) else spec
            raise SlmkitError(f"{source}: field 'data.sources.{name}.type'={got!r} must be one of "
                              "synthetic, jsonl, text, prepared")
    mix = cfg["data"].get("mix")
    if not isinstance(mix, dict) or "stable" not in mix:
        raise SlmkitError(f"{source}: field 'data.mix' must map phases (stable[, decay, long]) to source weights")
    for phase, weights in mix.items():
        if phase not in ("stable", "decay", "long"):
            raise SlmkitError(f"{source}: field 'data.mix.{phase}' is not a phase (use stable, decay or long)")
        if not isinstance(weights, dict) or not weights:
            raise SlmkitError(f"{source}: field 'data.mix.{phase}'={weights!r} must map sources to weights")
        for name, w in weights.items():
            if name not in sources:
                raise SlmkitError(f"{source}: field 'data.mix.{phase}.{name}' names no source in data.sources")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or not math.isfinite(w):
                raise SlmkitError(f"{source}: field 'data.mix.{phase}.{name}'={w!r} must be a non-negative weight")
        if sum(weights.values()) <= 0:
            raise SlmkitError(f"{source}: field 'data.mix.{phase}' weights sum to 0")


def _validate_long(cfg: dict, source: str) -> None:
    if not isinstance(cfg.get("long_context"), dict):
        raise SlmkitError(f"{source}: field 'long_context'={cfg.get('long_context')!r} must be a mapping")
    _num(cfg, "long_context.steps", source, nonneg=True, integer=True)
    if not cfg["long_context"]["steps"]:
        return
    lc = cfg["long_context"]
    _num(cfg, "long_context.seq_len", source, positive=True, integer=True)
    for key in ("rope_theta", "lr"):
        if lc.get(key) is not None:
            _num(cfg, f"long_context.{key}", source, positive=True)
    _num(cfg, "long_context.warmup", source, nonneg=True)
    _num(cfg, "long_context.decay", source, nonneg=True)
    _choice(cfg, "long_context.align", ("within_doc", "doc", "token"), source)
    tokens = lc.get("batch_tokens")
    if tokens is not None:
        _num(cfg, "long_context.batch_tokens", source, positive=True, integer=True)
    else:
        tokens = cfg["train"]["batch_size"] * cfg["train"]["seq_len"]
    if tokens % lc["seq_len"] or (tokens // lc["seq_len"]) % cfg["train"]["grad_accum"]:
        raise SlmkitError(f"{source}: field 'long_context.batch_tokens'={tokens} must be a multiple of "
                          f"long_context.seq_len={lc['seq_len']} × train.grad_accum={cfg['train']['grad_accum']} "
                          "(tokens per step are kept constant)")


def long_rows(cfg: dict) -> int:
    """Global sequences per step in the long-context stage (same tokens per step as before)."""
    lc = cfg["long_context"]
    tokens = lc.get("batch_tokens") or cfg["train"]["batch_size"] * cfg["train"]["seq_len"]
    return int(tokens) // int(lc["seq_len"])
