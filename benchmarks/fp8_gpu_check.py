"""FP8 vs bf16 training on one GPU (H100/H200): step throughput and loss, ~60 s in all.

Runs the slmkit µP Transformer at a ~150M shape (d 1024, 12 layers, GQA 16/4, ffn 2816, vocab 32000,
seq 2048) for a few dozen AdamW steps on a fixed random-token stream (the same batches for both):
  bf16 : torch.autocast(bfloat16)
  fp8  : torchao.float8 convert_to_float8_training (E4M3 forward operands, E5M2 gradients, tensorwise
         dynamic scales) on the block Linears, under the same bf16 autocast; embeddings, norms and
         the output projection stay in higher precision (as `slmkit train` does).
Both torch.compile'd (torchao's FP8 needs compile to be fast). If torchao is missing, or the GPU has
no FP8 support (< sm_89), the fp8 leg is skipped with a message and bf16 still runs.

    python benchmarks/fp8_gpu_check.py [--steps 30] [--warmup 8] [--no-compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = dict(vocab_size=32000, d_model=1024, n_layers=12, n_heads=16, n_kv_heads=4, d_ff=2816, max_seq_len=2048,
             rope_theta=10000.0, scale_emb=12.0, scale_depth=1.4, dim_model_base=256, init_std=0.1)


def build(args):
    from slmkit.model.config import ModelConfig
    from slmkit.model.transformer import Transformer

    torch.manual_seed(0)
    shape = dict(SHAPE, max_seq_len=args.seq)
    if args.tiny:
        shape.update(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, dim_model_base=32)
    return Transformer(ModelConfig.from_dict(shape)).to(args.device)


def run(model, batches, args, label: str) -> dict:
    from slmkit.model.mup import param_groups

    opt = torch.optim.AdamW(param_groups(model, args.lr, 0.1), lr=args.lr, betas=(0.9, 0.95), fused=True)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def loss_fn(x, y):
        with torch.autocast(args.device, dtype=torch.bfloat16):
            logits = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    fn = torch.compile(loss_fn) if args.compile else loss_fn
    losses, t_start = [], None
    t0 = time.perf_counter()
    for i, b in enumerate(batches):
        if i == args.warmup:
            sync()
            t_start = time.perf_counter()
        loss = fn(b[:, :-1], b[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    sync()
    elapsed = time.perf_counter() - t_start
    timed = len(batches) - args.warmup
    losses = [float(x) for x in losses]
    tps = timed * batches[0].shape[0] * args.seq / elapsed
    print(f"{label:5s}: {tps:10.0f} tokens/s  step {elapsed / timed * 1e3:7.1f} ms  loss {losses[0]:.3f} -> "
          f"{sum(losses[-5:]) / 5:.3f}  (total {time.perf_counter() - t0:.0f}s incl. compile)", flush=True)
    return {"tokens_per_s": tps, "step_ms": elapsed / timed * 1e3, "losses": losses,
            "final_loss": sum(losses[-5:]) / 5}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--json")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shape on CPU: checks the script, not FP8 speed")
    args = ap.parse_args(argv)
    args.device, args.tiny = ("cpu", True) if args.cpu_smoke else ("cuda", False)
    if args.cpu_smoke:
        args.seq, args.batch, args.compile = 32, 2, False
        cap, name = (9, 0), "cpu (smoke)"
    elif not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure (this check is for H100-class GPUs; --cpu-smoke runs a tiny CPU pass)")
        return 0
    else:
        cap, name = torch.cuda.get_device_capability(), torch.cuda.get_device_name()
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device {name} (sm_{cap[0]}{cap[1]}), torch {torch.__version__}")
    g = torch.Generator(device="cpu").manual_seed(0)
    vocab = 512 if args.tiny else SHAPE["vocab_size"]
    batches = [torch.randint(0, vocab, (args.batch, args.seq + 1), generator=g).to(args.device)
               for _ in range(args.steps)]
    base = build(args)
    print(f"model {sum(p.numel() for p in base.parameters()) / 1e6:.0f}M params, batch {args.batch} x seq {args.seq}")
    results = {"gpu": name, "torch": torch.__version__}
    results["bf16"] = run(copy.deepcopy(base), batches, args, "bf16")
    torch._dynamo.reset()
    try:
        import torchao
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as exc:
        print(f"torchao not installed ({exc}): fp8 leg skipped (pip install torchao)")
        results["fp8"] = {"skipped": "torchao missing"}
    else:
        if cap < (8, 9):
            print(f"GPU sm_{cap[0]}{cap[1]} has no FP8 tensor cores: fp8 leg skipped")
            results["fp8"] = {"skipped": "no fp8 hardware"}
        else:
            fp8_model = copy.deepcopy(base)

            def keep(mod, fqn):  # block Linears only, both dims multiples of 16
                return fqn.startswith("layers.") and mod.in_features % 16 == 0 and mod.out_features % 16 == 0

            convert_to_float8_training(fp8_model, config=Float8LinearConfig(), module_filter_fn=keep)
            n = sum(type(m).__name__ == "Float8Linear" for m in fp8_model.modules())
            print(f"torchao {torchao.__version__}: {n} Linear layers in FP8 (E4M3 fwd / E5M2 grad)")
            try:
                results["fp8"] = run(fp8_model, batches, args, "fp8")
            except Exception as exc:  # noqa: BLE001 - report any backend failure and keep the bf16 numbers
                print(f"fp8 leg failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                results["fp8"] = {"failed": str(exc)[:500]}
    if "tokens_per_s" in results.get("fp8", {}):
        sp = results["fp8"]["tokens_per_s"] / results["bf16"]["tokens_per_s"]
        gap = results["fp8"]["final_loss"] - results["bf16"]["final_loss"]
        results.update(speedup_fp8_over_bf16=sp, loss_gap_fp8_minus_bf16=gap)
        print(f"fp8 / bf16 throughput: {sp:.2f}x   final loss gap (fp8 - bf16): {gap:+.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
