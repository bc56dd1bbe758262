"""Training throughput: slmkit's train step vs a plain transformers.LlamaForCausalLM + torch.optim.AdamW loop.

Same shape (default: the µP proxy-20m preset), batch, sequence length and dtype (fp32), random tokens.
slmkit step = native µP Transformer (SDPA attention) + fused AdamW over the µP parameter groups +
cross-entropy on the fp32 logits (optionally torch.compile). Plain loop = LlamaForCausalLM(labels=...)
+ torch.optim.AdamW defaults. Steps of the two are interleaved and the fastest of each is kept, so
load from other processes on a shared machine hits both alike. Prints tokens/s of both, their ratio,
and achieved FLOP/s (6·N + attention per token) against this machine's measured fp32 matmul FLOP/s.

    python benchmarks/train_throughput.py [--shape proxy-20m] [--batch 4] [--seq 256] [--repeats 4] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def matmul_peak(n: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def slmkit_step_fn(cfg, batch, compile_: bool):
    from slmkit.model.mup import param_groups
    from slmkit.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(cfg).train()
    opt = torch.optim.AdamW(param_groups(model, 1e-3, 0.1), lr=1e-3, betas=(0.9, 0.95), fused=True)
    x, y = batch[:, :-1], batch[:, 1:]

    def loss_fn(x, y):
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    fn = torch.compile(loss_fn) if compile_ else loss_fn

    def step():
        loss = fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def hf_step_fn(cfg, batch):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                         num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                         num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.hd, max_position_embeddings=cfg.max_seq_len,
                         tie_word_embeddings=cfg.tie_embeddings, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta)
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

    def step():
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="proxy-20m", help="slmkit model preset")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=4, help="timed steps per implementation (after 1 warmup)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the slmkit forward+loss")
    ap.add_argument("--threads", default="auto", help="torch threads (auto: free cores, see slmkit.train.trainer)")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)

    from slmkit.model.config import ModelConfig
    from slmkit.train.metrics import flops_per_token
    from slmkit.train.trainer import set_threads

    threads = set_threads(args.threads)
    cfg = ModelConfig.from_preset(args.shape)
    torch.manual_seed(0)
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))
    tokens = args.batch * args.seq
    peak = matmul_peak()
    steps = {"slmkit": slmkit_step_fn(cfg, batch, args.compile), "hf_llama": hf_step_fn(cfg, batch[:, :-1])}
    for fn in steps.values():  # warmup (and compile)
        fn()
    times: dict = {k: [] for k in steps}
    for _ in range(args.repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    tps = {k: tokens / t for k, t in best.items()}
    fpt = flops_per_token(cfg, args.seq)
    flops = tps["slmkit"] * fpt
    res = {"shape": args.shape, "batch": args.batch, "seq": args.seq, "threads": threads, "compile": args.compile,
           "dtype": "fp32", "params": cfg.num_params(), "tokens_per_s": tps, "ratio_slmkit_over_hf": tps["slmkit"] / tps["hf_llama"],
           "flops_per_token": fpt, "achieved_flops": flops, "matmul_peak_flops": peak,
           "fraction_of_matmul_peak": flops / peak, "hf_fraction_of_peak": tps["hf_llama"] * fpt / peak,
           "step_seconds": times, "load_avg": os.getloadavg()[0]}
    print(f"shape {args.shape} ({cfg.num_params() / 1e6:.1f}M params), batch {args.batch} x seq {args.seq}, fp32, "
          f"{threads} thread(s){', compiled' if args.compile else ''}")
    print(f"slmkit   : {tps['slmkit']:9.1f} tokens/s")
    print(f"HF Llama : {tps['hf_llama']:9.1f} tokens/s")
    print(f"ratio slmkit / plain HF loop           : {res['ratio_slmkit_over_hf']:.2f}x")
    print(f"achieved {flops / 1e9:.1f} GFLOP/s vs measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s "
          f"-> fraction of peak: {res['fraction_of_matmul_peak']:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
