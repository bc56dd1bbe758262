"""CLI commands of the trainer, registered into the main `slmkit` parser by `add_commands(sub)`:

  slmkit train CONFIG.yaml [--resume [CKPT]] [--out RUN_DIR] [--set key=value ...]
  slmkit data prepare (--config CONFIG.yaml | --source NAME=GLOB ... --tokenizer DIR) --out DIR
  slmkit mup coord-check [--out DIR] [--widths 64,128,256,512] [--steps 5]
  slmkit mup sweep [--out DIR] [--widths 64,256] [--lrs ...] [--steps 60]
  slmkit repro {wsd-vs-cosine,muon-decay,fp8,mup-transfer,long-context,all} [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slmkit.errors import SlmkitError


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of {kind.__name__}") from None
    return parse


def cmd_train(args) -> int:
    from slmkit.train.config import load_config
    from slmkit.train.trainer import run

    cfg, source = load_config(args.config, args.set or [])
    out = Path(args.out) if args.out else Path("runs") / cfg.get("name", Path(args.config).stem)
    resume = args.resume if args.resume not in (None, "latest") else (args.resume == "latest")
    if resume is True and out.is_dir() and any(out.iterdir()) and not (
            (out / "config.json").exists() or (out / "checkpoints").is_dir()):
        raise SlmkitError(f"{out}: not a training run (no config.json or checkpoints/); --resume continues a run "
                          f"that was started with this --out")
    if isinstance(resume, str) and not Path(resume).is_dir():
        raise SlmkitError(f"--resume {resume}: checkpoint folder not found")
    summary = run(cfg, out, resume=resume)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        brief = {k: summary[k] for k in ("run_dir", "end_step", "final_loss", "tokens_per_s", "checkpoint",
                                         "milestones", "interrupted") if k in summary}
        if "heldout" in summary:
            brief["heldout_accuracy"] = summary["heldout"]["accuracy"]
            brief["heldout_baseline"] = summary["heldout"]["baseline"]
        print(json.dumps(brief, indent=2))
    return 0


def cmd_data_prepare(args) -> int:
    from slmkit.train.data import prepare

    base = None
    if args.config:
        from slmkit.train.config import load_config

        cfg, _ = load_config(args.config, args.set or [])
        sources = {n: s for n, s in cfg["data"]["sources"].items() if s["type"] != "prepared"}
        tok = args.tokenizer or (cfg.get("tokenizer") or {}).get("path")
        base = Path(cfg["_config_dir"])
    else:
        sources = {}
        for item in args.source or []:
            name, sep, spec = item.partition("=")
            if not sep or not name:
                raise SlmkitError(f"--source '{item}': expected NAME=GLOB, NAME=synthetic:N_DOCS")
            if spec.startswith("synthetic:"):
                try:
                    sources[name] = {"type": "synthetic", "docs": int(spec.split(":", 1)[1]), "seed": args.seed}
                except ValueError:
                    raise SlmkitError(f"--source '{item}': synthetic:N needs an integer N") from None
            else:
                kind = "jsonl" if ".jsonl" in spec else "text"
                sources[name] = {"type": kind, "paths": [spec]}
                if args.max_docs:
                    sources[name]["max_docs"] = args.max_docs
        tok = args.tokenizer
    if not sources:
        raise SlmkitError("data prepare: no sources (use --config or --source NAME=GLOB)")
    if not tok:
        raise SlmkitError("data prepare: --tokenizer DIR is required")
    manifest = prepare(sources, tok, args.out, base=base)
    print(json.dumps({"out": args.out, "dtype": manifest["dtype"], "total_tokens": manifest["total_tokens"],
                      "sources": {n: {"docs": s["docs"], "tokens": s["tokens"]} for n, s in manifest["sources"].items()}},
                     indent=2))
    return 0


def cmd_coord_check(args) -> int:
    from slmkit.train.experiments.mup_tools import coord_check

    res = coord_check(Path(args.out), widths=args.widths, steps=args.steps, seed=args.seed)
    print(json.dumps({k: v for k, v in res.items() if k != "records"}, indent=2))
    return 0


def cmd_sweep(args) -> int:
    from slmkit.train.experiments.mup_tools import lr_sweep

    res = lr_sweep(Path(args.out), widths=args.widths, lrs=args.lrs, steps=args.steps, seed=args.seed)
    print(res["table"])
    return 0


def cmd_repro(args) -> int:
    from slmkit.train.experiments import repro

    names = list(repro.EXPERIMENTS) if args.which == "all" else [args.which]
    for name in names:
        res = repro.EXPERIMENTS[name](Path(args.out) / name, quick=args.quick)
        print(res.get("table", json.dumps(res, indent=2, default=str)))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config (single process or under torchrun)")
    p.add_argument("config", help="training config YAML, or a shipped recipe name (nano-demo, proxy-20m, xmodel2.5-1.3b)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the latest checkpoint in --out, or from the given checkpoint folder")
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.set_defaults(func=cmd_train)

    d = sub.add_parser("data", help="training data tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dp = dsub.add_parser("prepare", help="tokenize sources into packed memory-mapped token shards")
    dp.add_argument("--config", help="take sources (and tokenizer.path) from a training config")
    dp.add_argument("--source", action="append", metavar="NAME=GLOB", help="NAME=path/glob (JSONL or text) or NAME=synthetic:N")
    dp.add_argument("--tokenizer", help="tokenizer folder")
    dp.add_argument("--out", required=True, help="output folder (manifest.json + <source>/NNNNN.bin)")
    dp.add_argument("--max-docs", type=int, default=None, help="cap documents per source")
    dp.add_argument("--seed", type=int, default=0, help="seed of synthetic sources")
    dp.add_argument("--set", action="append", metavar="KEY=VALUE")
    dp.set_defaults(func=cmd_data_prepare)

    m = sub.add_parser("mup", help="µP tooling: coordinate check and LR × width sweep")
    msub = m.add_subparsers(dest="mup_command", required=True)
    cc = msub.add_parser("coord-check", help="activation RMS per layer vs width, µP vs standard parametrization")
    cc.add_argument("--out", default="runs/mup-coord-check")
    cc.add_argument("--widths", type=_csv(int), default=[64, 128, 256, 512])
    cc.add_argument("--steps", type=int, default=5)
    cc.add_argument("--seed", type=int, default=0)
    cc.set_defaults(func=cmd_coord_check)
    sw = msub.add_parser("sweep", help="final loss over an LR × width grid (µP and standard)")
    sw.add_argument("--out", default="runs/mup-sweep")
    sw.add_argument("--widths", type=_csv(int), default=[64, 256])
    sw.add_argument("--lrs", type=_csv(float), default=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    sw.add_argument("--steps", type=int, default=60)
    sw.add_argument("--seed", type=int, default=0)
    sw.set_defaults(func=cmd_sweep)

    r = sub.add_parser("repro", help="fidelity experiments (WSD vs cosine, Muon decay, FP8 gap, µP transfer, long context)")
    r.add_argument("which", choices=["wsd-vs-cosine", "muon-decay", "fp8", "mup-transfer", "long-context", "all"])
    r.add_argument("--out", default="runs/repro")
    r.add_argument("--quick", action="store_true", help="tiny settings (seconds; for smoke tests)")
    r.set_defaults(func=cmd_repro)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m slmkit.train ...`) until/unless the main CLI is used."""
    parser = argparse.ArgumentParser(prog="slmkit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SlmkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
