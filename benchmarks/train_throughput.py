"""Training throughput of the product: `Trainer.train_step` against a plain HF LlamaForCausalLM loop.

slmkit side: the real `slmkit.train.trainer.Trainer` at the proxy-20m shape (vocab 32000, d 256,
16 layers) on the shipped corpus: the data sampler with its background prefetch, µP parameter
groups, gradient clipping, the WSD schedule, fused AdamW in the stable phase and the AdamW→Muon
hand-over in the decay phase; eager and torch.compile'd (train.compile=true). Plain loop:
transformers.LlamaForCausalLM of the same shape (labels= loss), torch.optim.AdamW with the same
settings (lr, betas, eps, weight decay, fused) and the same gradient clipping, on the same token
batches. The implementations' steps are interleaved round by round, so load from other processes
hits all alike; per-step times are reported as the fastest and the median. Also: achieved FLOP/s
(6·N + attention per token) as a fraction of this machine's fp32 matmul FLOP/s measured in the
same run with the same threads (sampled between rounds, the best sample kept, as for the steps).

    python benchmarks/train_throughput.py [--batch 4] [--seq 256] [--rounds 6] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CORPUS = "$SLMKIT_DATA/pretrain_corpus"


def matmul_peak(n: int = 1024, seconds: float = 2.0) -> float:
    """Best fp32 GEMM FLOP/s over `seconds` (the ceiling a training step's matmuls could reach)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b
    best = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def trainer_config(work: Path, batch: int, seq: int, steps: int, compile_: bool, threads: int) -> dict:
    from slmkit.train.testing import tiny_tokenizer

    tok = tiny_tokenizer(work / "tok", vocab_size=1024, docs=2000)  # the model keeps the 32000-row embedding
    return {
        "name": "throughput", "seed": 0,
        "model": {"preset": "proxy-20m", "vocab_size": 32000, "max_seq_len": max(seq, 256)},
        "tokenizer": {"path": str(tok)},
        "data": {"sources": {"en": {"type": "jsonl", "paths": [f"{CORPUS}/en_*.jsonl.gz"], "max_docs": 400},
                             "code": {"type": "jsonl", "paths": [f"{CORPUS}/code_*.jsonl.gz"], "max_docs": 150}},
                 "mix": {"stable": {"en": 0.7, "code": 0.3}}, "cache_dir": str(work / "data")},
        "train": {"steps": steps, "batch_size": batch, "seq_len": seq, "precision": "fp32", "grad_clip": 1.0,
                  "compile": compile_, "threads": threads},
        "schedule": {"type": "wsd", "lr": 0.01, "warmup": 1, "decay": steps // 2},
        "optimizer": {"stable": "adamw", "decay": "muon", "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8},
        "checkpoint": {"every": 0, "milestones": [], "final": False},
        "log": {"every": 1000, "tensorboard": False, "plots": False, "progress": False},
        "eval": {"synthetic_heldout": 0},
    }


class SlmkitSide:
    """A real Trainer; `step()` runs the next `train_step` (numbers flushed every 8 steps, as log steps would)."""

    def __init__(self, cfg: dict, run_dir: Path) -> None:
        from slmkit.train import data as data_mod
        from slmkit.train.config import load_config
        from slmkit.train.trainer import Trainer

        cfg, _ = load_config(cfg)
        self.trainer = Trainer(cfg, run_dir)
        self.trainer.model.train()
        self.trainer.prefetch = data_mod.Prefetcher(self.trainer.host_batch, 0, self.trainer.total_steps)
        self.next = 0

    def phase(self) -> str:
        return self.trainer.sched.phase(self.next)

    def step(self) -> None:
        self.trainer.train_step(self.next)
        self.next += 1
        if self.next % 8 == 0:
            self.trainer.flush()

    def batch(self, step: int) -> torch.Tensor:
        return self.trainer.host_batch(step)

    def close(self) -> None:
        self.trainer.flush()
        self.trainer.prefetch.close()


class HFSide:
    """LlamaForCausalLM + AdamW (same settings as the trainer's) + clip, fed the trainer's batches."""

    def __init__(self, mcfg, batches, lr: float = 0.01) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM

        hf_cfg = LlamaConfig(vocab_size=mcfg.vocab_size, hidden_size=mcfg.d_model, intermediate_size=mcfg.d_ff,
                             num_hidden_layers=mcfg.n_layers, num_attention_heads=mcfg.n_heads,
                             num_key_value_heads=mcfg.n_kv_heads, head_dim=mcfg.hd,
                             max_position_embeddings=mcfg.max_seq_len, tie_word_embeddings=mcfg.tie_embeddings,
                             rms_norm_eps=mcfg.norm_eps, rope_theta=mcfg.rope_theta, attn_implementation="sdpa")
        torch.manual_seed(0)
        self.model = LlamaForCausalLM(hf_cfg).float().train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                                     fused=True)
        self.batches, self.next = batches, 0

    def step(self) -> None:
        rows = self.batches(self.next)
        self.next += 1
        out = self.model(input_ids=rows[:, :-1], labels=rows[:, :-1])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=6, help="timed rounds per phase (each: one step of every side)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side first (compile happens here)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled trainer")
    ap.add_argument("--work", default="runs/throughput", help="tokenizer/data cache and scratch run folders")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("SLMKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

    from slmkit.train.metrics import flops_per_token

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    steps = 2 * (args.warmup + args.rounds)  # stable half (AdamW), decay half (AdamW + Muon)
    sides: dict = {}
    t0 = time.perf_counter()
    sides["slmkit eager"] = SlmkitSide(trainer_config(work, args.batch, args.seq, steps, False, args.threads),
                                       work / "run-eager")
    if args.compile:
        sides["slmkit compiled"] = SlmkitSide(trainer_config(work, args.batch, args.seq, steps, True, args.threads),
                                              work / "run-compiled")
    ref = sides["slmkit eager"]
    mcfg = ref.trainer.model.cfg
    sides["HF Llama loop"] = HFSide(mcfg, ref.batch)
    print(f"setup {time.perf_counter() - t0:.0f}s; proxy-20m shape ({ref.trainer.model.num_params() / 1e6:.1f}M params), "
          f"batch {args.batch} x seq {args.seq}, fp32, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}",
          flush=True)
    times: dict = {name: {"stable": [], "decay": []} for name in sides}
    peaks: list[float] = []
    for phase in ("stable", "decay"):
        for name, side in sides.items():  # warmup (compiles; the Muon switch happens at the first decay step)
            for _ in range(args.warmup):
                tw = time.perf_counter()
                side.step()
                if phase == "stable" and name == "slmkit compiled" and side.next == 1:
                    print(f"  compile + first step: {time.perf_counter() - tw:.0f}s "
                          f"({side.trainer.compile_note})", flush=True)
        for _ in range(args.rounds):
            for name, side in sides.items():
                ts = time.perf_counter()
                side.step()
                times[name][phase].append(time.perf_counter() - ts)
            peaks.append(matmul_peak(seconds=0.5))  # sampled between rounds: the same load as the steps
        print(f"  {phase} phase timed", flush=True)
    optimizers = {k: type(v).__name__ for k, v in ref.trainer.opts.items()}
    for side in sides.values():
        if isinstance(side, SlmkitSide):
            side.close()
    peak = max(peaks)  # the best GEMM rate seen, as the steps' best times are
    tokens = args.batch * args.seq
    fpt = flops_per_token(mcfg, args.seq)
    res = {"shape": "proxy-20m", "batch": args.batch, "seq": args.seq, "threads": args.threads, "dtype": "fp32",
           "params": ref.trainer.model.num_params(), "flops_per_token": fpt, "matmul_peak_flops": peak, "matmul_peak_samples": peaks,
           "load_avg": os.getloadavg()[0], "decay_optimizers": optimizers, "step_seconds": times, "phases": {}}
    hf = "HF Llama loop"
    for phase in ("stable", "decay"):
        row = {}
        for name in sides:
            best, med = min(times[name][phase]), statistics.median(times[name][phase])
            row[name] = {"tokens_per_s_best": tokens / best, "tokens_per_s_median": tokens / med,
                         "fraction_of_matmul_peak": tokens / best * fpt / peak}
        for name in sides:
            if name != hf:
                row[name]["ratio_over_hf_best"] = row[name]["tokens_per_s_best"] / row[hf]["tokens_per_s_best"]
                row[name]["ratio_over_hf_median"] = row[name]["tokens_per_s_median"] / row[hf]["tokens_per_s_median"]
        res["phases"][phase] = row
    print(f"\nfp32 matmul peak (1024^3 GEMM, {args.threads} threads): {peak / 1e9:.1f} GFLOP/s; "
          f"{fpt / 1e6:.1f} MFLOP per token")
    print(f"{'phase':7s} {'implementation':16s} {'tok/s best':>10s} {'tok/s med':>10s} {'x HF best':>9s} "
          f"{'x HF med':>9s} {'of peak':>8s}")
    for phase, row in res["phases"].items():
        label = phase + (" (AdamW)" if phase == "stable" else " (+Muon)")
        for name, r in row.items():
            print(f"{label:15s} {name:16s} {r['tokens_per_s_best']:10.0f} {r['tokens_per_s_median']:10.0f} "
                  f"{r.get('ratio_over_hf_best', 1.0):9.2f} {r.get('ratio_over_hf_median', 1.0):9.2f} "
                  f"{r['fraction_of_matmul_peak']:8.1%}")
    print("(HF loop: plain AdamW in both phases; the slmkit decay phase runs Muon on the hidden matrices)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
