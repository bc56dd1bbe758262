"""Core subcommands: demo, export hf, tokenizer train, generate."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on the built-in synthetic corpus (CPU, minutes)")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="fewer steps/problems (smoke test)")
    p.add_argument("--stages", default=None, help="comma-separated subset of stages to run after training")
    p.set_defaults(func=_demo)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_cmd", metavar="CMD")
    t = tsub.add_parser("train", help="train a byte-level BPE on local text/JSONL files (or the synthetic corpus)")
    t.add_argument("files", nargs="*", help="text or JSONL(.gz) files; none = the built-in synthetic corpus")
    t.add_argument("--vocab-size", type=int, default=1024)
    t.add_argument("--out", required=True)
    t.add_argument("--synthetic", type=int, default=20000, help="number of synthetic documents when no files are given")
    t.add_argument("--max-chars", type=int, default=50_000_000)
    t.set_defaults(func=_tokenizer_train)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    p = sub.add_parser("generate", help="generate text from a model (checkpoint, HF folder, GGUF or ONNX folder)")
    p.add_argument("model")
    p.add_argument("prompt")
    p.add_argument("--backend", default=None)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user chat message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[])
    p.set_defaults(func=_generate)


def add_export_commands(export_sub) -> None:
    p = export_sub.add_parser("hf", help="write a plain Hugging Face LlamaForCausalLM folder (µP folded in)")
    p.add_argument("model", help="slmkit checkpoint folder or HF Llama folder")
    p.add_argument("out")
    p.add_argument("--no-parity", action="store_true", help="skip the stock-transformers logit check")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max relative logit error allowed")
    p.set_defaults(func=_export_hf)


def _export_hf(args) -> int:
    from slmkit.model.hf import export_hf, load_any, tokenizer_dir_of
    from slmkit.model.hf_parity import check_hf_parity

    model = load_any(args.model)
    out = export_hf(model, args.out, tokenizer_dir_of(args.model))
    print(f"wrote {out}")
    if not args.no_parity:
        report = check_hf_parity(model, out, tolerance=args.tolerance)
        print(f"parity: max relative logit error {report['max_rel_error']:.2e} (≤ {args.tolerance:g}), "
              f"top-1 agreement {report['top1_agreement']:.4f}")
    return 0


def _tokenizer_train(args) -> int:
    from slmkit.model.tokenizer import train_bpe, train_bpe_from_files

    if args.files:
        tok = train_bpe_from_files(args.files, args.vocab_size, args.out, max_chars=args.max_chars)
    else:
        from slmkit.corpus.synthetic import training_texts

        tok = train_bpe(training_texts(args.synthetic, seed=0), args.vocab_size, args.out)
    print(f"wrote {args.out} ({len(tok)} tokens)")
    return 0


def _generate(args) -> int:
    from slmkit.serve import SamplingParams, load

    runtime = load(args.model, backend=args.backend)
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed)
    for piece in runtime.generate(prompt, params, stop=args.stop):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    runtime.close()
    return 0


def _demo(args) -> int:
    from slmkit.demo import run_demo

    report = run_demo(Path(args.out), quick=args.quick, stages=args.stages.split(",") if args.stages else None)
    print(json.dumps(report["summary"], indent=2))
    return 0 if report["summary"].get("ok") else 1
