"""`slmkit agent run BENCH MODEL ...`, `slmkit agent show RUN` and `slmkit agent report RUN...` (registered by
slmkit.cli)."""

from __future__ import annotations

import argparse


def add_commands(subparsers) -> None:
    agent = subparsers.add_parser("agent", help="ReAct agents: HotpotQA, FEVER (offline), ALFWorld, WebShop")
    sub = agent.add_subparsers(dest="agent_command", metavar="ACTION")
    agent.set_defaults(func=lambda args: (agent.print_help(), 2)[1])

    run = sub.add_parser("run", help="run a benchmark's episodes with ReAct prompting (resumable)",
                         description="Episodes run many at once; rerunning with the same --out skips finished "
                         "episodes. Writes trajectories.jsonl, results.json, report.md/html.")
    run.add_argument("benchmark", help="hotpotqa, fever, alfworld or webshop")
    run.add_argument("model", help="checkpoint / HF folder / .gguf / ONNX folder, or a pulled model name")
    run.add_argument("--backend", default=None, help="torch, llama.cpp, onnxruntime, vllm (default: from the artifact)")
    run.add_argument("--limit", default=None, help="first N tasks in ReAct's sample order (default: all)")
    run.add_argument("--corpus", default=None, help="folder / JSONL of {title, sentences} pages for search/lookup")
    run.add_argument("--live-wiki", action="store_true", help="query live Wikipedia as ReAct did (needs the network)")
    run.add_argument("--catalog", default=None, help="webshop: a folder with the standard catalog files")
    run.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="extra environment option (repeatable), passed to its load_environment")
    run.add_argument("--out", default=None, help="run folder (default runs/agent-BENCH-MODEL)")
    run.add_argument("--parallel", type=int, default=8, help="episodes decoded at once (default 8)")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for the runtime")
    run.add_argument("--prefix-cache-mb", type=float, default=None,
                     help="engine prefix cache (keeps every episode's trajectory between its steps; default 1024)")
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (ReAct's setting)")
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--max-new-tokens", type=int, default=100, help="per model call (ReAct: 100)")
    run.add_argument("--naive", action="store_true", help="reference loop: one episode at a time, full re-prefill per call")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("show", help="print a run's episodes, or one trajectory readably")
    show.add_argument("run", help="a run folder written by `slmkit agent run`")
    show.add_argument("--episode", default=None, help="episode number (task order) or task id")
    show.add_argument("--full-prompt", action="store_true", help="also print the few-shot prompt")
    show.set_defaults(func=cmd_show)

    report = sub.add_parser("report", help="one table of several runs' scores beside Xmodel-2's Table 4",
                            description="Reads each run folder's results.json: HotpotQA / FEVER EM, ALFWorld / "
                            "WebShop success per model, the published rows, ALFWorld per task type.")
    report.add_argument("runs", nargs="+", help="run folders written by `slmkit agent run`")
    report.add_argument("--out", default=None, help="write the Markdown here (default: print it)")
    report.set_defaults(func=cmd_report)


def _options(args) -> dict:
    from slmkit.errors import SlmkitError

    opts = {"corpus": args.corpus, "live_wiki": True if args.live_wiki else None, "catalog": args.catalog}
    for item in args.option:
        if "=" not in item:
            raise SlmkitError(f"--option {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        opts[key.strip().replace("-", "_")] = value
    return opts


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slmkit.agents.react import Sampling
    from slmkit.agents.runner import run_agent

    out = args.out or str(Path("runs") / f"agent-{args.benchmark}-{Path(args.model).stem}")
    sampling = Sampling(temperature=args.temperature, top_p=args.top_p, seed=args.seed, max_new_tokens=args.max_new_tokens)
    res = run_agent(args.benchmark, args.model, out, backend=args.backend, limit=args.limit, options=_options(args),
                    parallel=args.parallel, sampling=sampling, threads=args.threads, naive=args.naive,
                    progress=not args.no_progress,
                    **({} if args.prefix_cache_mb is None else {"prefix_cache_mb": args.prefix_cache_mb}))
    scores = ", ".join(f"{k} {v:.2f}" for k, v in res["scores"].items())
    flag = "" if res["comparable"] else f"  [not comparable: {res['not_comparable_because']}]"
    print(f"{res['benchmark']} ({res['mode']}): {res['episodes']} episodes, {scores}; invalid actions "
          f"{100 * res['stats']['invalid_action_rate']:.1f}%, mean steps {res['stats']['mean_steps']}{flag}")
    print(f"wrote {out}/results.json, report.md, report.html, trajectories.jsonl")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from slmkit.agents.combined import combined_markdown, load_results
    from slmkit.paths import atomic_write_text

    text = combined_markdown(load_results(args.runs))
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from slmkit.agents.show import show_run

    print(show_run(args.run, args.episode, full_prompt=args.full_prompt))
    return 0
