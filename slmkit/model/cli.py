"""`slmkit tokenizer train`: a byte-level BPE (digits split) on local text/JSONL, or the synthetic corpus."""

from __future__ import annotations


def add_commands(sub) -> None:
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


def _tokenizer_train(args) -> int:
    from slmkit.model.tokenizer import train_bpe, train_bpe_from_files

    if args.files:
        tok = train_bpe_from_files(args.files, args.vocab_size, args.out, max_chars=args.max_chars)
    else:
        from slmkit.corpus.synthetic import training_texts

        tok = train_bpe(training_texts(args.synthetic, seed=0), args.vocab_size, args.out)
    print(f"wrote {args.out} ({len(tok)} tokens)")
    return 0
