"""`slmkit <stage> ...`: one entry point; each stage registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

from slmkit import __version__
from slmkit.errors import SlmkitError

# (module, function) pairs; each function takes the top-level subparsers and adds its commands.
STAGE_COMMANDS = [
    ("slmkit.core_cli", "add_commands"),          # demo, export hf, tokenizer train, generate, info
    ("slmkit.train.cli", "add_commands"),         # train, data prepare, mup, repro
    ("slmkit.export.cli", "add_models_commands"),  # models pull/list
    ("slmkit.export.merge_cli", "add_merge_commands"),
    ("slmkit.evaluate.cli", "add_commands"),      # eval, eval compare
    ("slmkit.serve.cli", "add_commands"),         # bench latency/shapes
]
# export subcommands hang under `slmkit export`
EXPORT_COMMANDS = [
    ("slmkit.core_cli", "add_export_commands"),   # export hf
    ("slmkit.export.cli", "add_gguf_commands"),
    ("slmkit.export.onnx_cli", "add_onnx_commands"),
]


def _register(target, table) -> None:
    for module_name, func_name in table:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
                continue  # stage not part of this install
            raise
        func = getattr(module, func_name, None)
        if func is not None:
            func(target)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slmkit", description="Train, evaluate, export and serve small reasoning LMs.")
    parser.add_argument("--version", action="version", version=f"slmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    export = sub.add_parser("export", help="export a checkpoint: hf, gguf, onnx")
    export_sub = export.add_subparsers(dest="export_format", metavar="FORMAT")
    export.set_defaults(func=lambda args: (export.print_help(), 2)[1])
    _register(export_sub, EXPORT_COMMANDS)
    _register(sub, STAGE_COMMANDS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except SlmkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
