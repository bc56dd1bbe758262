"""The training loop: one function, `run`, shared by `slmkit train`, the Python API and torchrun.

Each step: (maybe) switch phase → draw the global batch for (seed, step) → forward/backward over
micro-batches → skip the step if the loss or gradient norm is non-finite → clip → set every group's
LR from the schedule → optimizer step(s) → log → checkpoint. Everything a step depends on is either a
function of the step or saved in the checkpoint, which is what makes `--resume` bit-exact.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from slmkit.errors import SlmkitError
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer
from slmkit.paths import atomic_write_json
from slmkit.train import data as data_mod
from slmkit.train import dist as dist_mod
from slmkit.train import fp8 as fp8_mod
from slmkit.train import optim as optim_mod
from slmkit.train import state as state_mod
from slmkit.train.metrics import MetricsLog, flops_per_token, measured_matmul_flops, plot_run
from slmkit.train.schedule import Schedule, plot_schedules


# ---------------------------------------------------------------- setup helpers

def resolve_tokenizer(cfg: dict, run_dir: Path, dist: dist_mod.Dist) -> Path | None:
    """The tokenizer folder; trains the configured byte-level BPE there on first use (rank 0)."""
    t = cfg.get("tokenizer") or {}
    path = t.get("path")
    if path:
        import os

        path = Path(os.path.expandvars(str(path))).expanduser()  # relative: to the working directory
    else:
        path = run_dir / "tokenizer" if t.get("train_bpe") else None
    if path is None:
        return None
    has = (path / "tokenizer.json").exists() or (path / "tokenizer.json.gz").exists()
    if not has:
        spec = t.get("train_bpe")
        if not spec:
            raise SlmkitError(f"tokenizer.path={path}: no tokenizer.json there (set tokenizer.train_bpe to train one)")
        if dist.is_main:
            from slmkit.corpus.synthetic import training_texts
            from slmkit.model.tokenizer import train_bpe

            if spec.get("files"):  # JSONL/text files (globs, $SLMKIT_DATA expanded)
                from slmkit.model.tokenizer import train_bpe_from_files
                from slmkit.train.data import _expand

                files = [f for g in spec["files"] for f in _expand(g, None)]
                train_bpe_from_files(files, int(spec.get("vocab_size", 32000)), path,
                                     max_chars=int(spec.get("max_chars", 50_000_000)))
            else:
                texts = training_texts(int(spec.get("synthetic_docs", 4000)), spec.get("seed", 12345))
                train_bpe(texts, int(spec.get("vocab_size", 1024)), path)
        dist.barrier()
    return path


def build_model_config(cfg: dict, tokenizer) -> ModelConfig:
    m = dict(cfg["model"])
    preset = m.pop("preset", None)
    base = ModelConfig.from_preset(preset).to_dict() if preset else ModelConfig().to_dict()
    vocab = m.get("vocab_size", base["vocab_size"])
    if vocab == "auto":
        if tokenizer is None:
            raise SlmkitError("config: field 'model.vocab_size'='auto' needs tokenizer.path")
        m["vocab_size"] = len(tokenizer)
    elif tokenizer is not None and isinstance(vocab, int) and vocab < len(tokenizer):
        raise SlmkitError(f"config: field 'model.vocab_size'={vocab} is smaller than the tokenizer ({len(tokenizer)})")
    base.update(m)
    if tokenizer is not None:
        base.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    base.setdefault("name", cfg.get("name", "custom"))
    return ModelConfig.from_dict(base, source="config (model)")


def set_threads(setting) -> int:
    """`auto`: the cores not already busy (OpenMP with more threads than free cores collapses on a
    shared machine: 2 threads on 2 loaded cores ran 4-10x slower than 1 here), at least 1."""
    import os

    if setting in (None, "auto"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            cores = max(1, cores // int(os.environ["WORLD_SIZE"]))
        busy = int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
        n = 1 if busy >= cores else cores
    else:
        n = int(setting)
    torch.set_num_threads(n)
    return n


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves and exits after the current step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn())
    return prog


# ---------------------------------------------------------------- the loop

def run(cfg: dict, run_dir: str | Path, resume: bool | str | Path = False, *,
        stop_after: int | None = None, on_step: Callable[[dict], None] | None = None) -> dict:
    """Train per `cfg` into `run_dir`; returns the summary dict (also written to RUN/summary.json).

    resume: False, True (latest checkpoint in run_dir) or a checkpoint folder (e.g. a `stable-end`
    milestone to branch a decay run from). stop_after: behave as if SIGTERM arrived after that step.
    """
    run_dir = Path(run_dir)
    dist = dist_mod.init(cfg.get("device", "auto"))
    try:
        return _run(cfg, run_dir, resume, dist, stop_after, on_step)
    finally:
        dist.close()


def _run(cfg, run_dir, resume, dist, stop_after, on_step) -> dict:
    t_setup = time.perf_counter()
    device = dist.device
    tcfg = cfg["train"]
    threads = set_threads(tcfg.get("threads", "auto")) if device.type == "cpu" else None
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = run_dir / "checkpoints"
    if dist.is_main:
        atomic_write_json(run_dir / "config.json", {k: v for k, v in cfg.items() if not k.startswith("_")})

    tok_dir = resolve_tokenizer(cfg, run_dir, dist)
    tokenizer = None
    if tok_dir is not None:
        from slmkit.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tok_dir)
    mcfg = build_model_config(cfg, tokenizer)
    if tcfg["seq_len"] > mcfg.max_seq_len:
        raise SlmkitError(f"config: field 'train.seq_len'={tcfg['seq_len']} exceeds model.max_seq_len={mcfg.max_seq_len}")
    if tcfg["batch_size"] % (dist.world * tcfg["grad_accum"]):
        raise SlmkitError(f"config: field 'train.batch_size'={tcfg['batch_size']} must be divisible by "
                          f"world_size×grad_accum={dist.world * tcfg['grad_accum']}")

    # model (same seed on every rank), then state to resume from
    torch.manual_seed(int(cfg["seed"]))
    model = Transformer(mcfg)
    resume_path = None
    if resume:
        resume_path = state_mod.find_resume(run_dir) if resume is True else Path(resume)
        if resume_path is None and resume is True:
            resume_path = None  # nothing saved yet: start fresh
    tstate = None
    if resume_path is not None:
        from slmkit.model.checkpoint import load_state, load_weights_checked

        _, tensors, _ = load_state(resume_path)
        load_weights_checked(model, tensors, resume_path / "model.safetensors")
        tstate = state_mod.load(resume_path)
    precision = tcfg["precision"]
    fp8_backend, fp8_layers = None, []
    if precision == "fp8":
        fp8_backend, fp8_layers = fp8_mod.convert(model, cfg, device)
        if tstate and tstate.get("fp8"):
            fp8_mod.load_scaler_state(model, tstate["fp8"])
    model.to(device)
    fsdp = dist.enabled and cfg["distributed"]["strategy"] == "fsdp"
    fwd_model = dist_mod.wrap(model, dist, cfg["distributed"]["strategy"])  # FSDP swaps in DTensor params
    owners = tstate["owners"] if tstate else optim_mod.initial_owners(model)
    opts = optim_mod.build(model, cfg, owners, device)
    if tstate:
        for name, opt in opts.items():
            if name not in tstate["optimizers"]:
                raise SlmkitError(f"{resume_path}: trainer state has no '{name}' optimizer (owners disagree)")
            if fsdp:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(model, opt, tstate["optimizers"][name],
                                         options=StateDictOptions(full_state_dict=True))
            else:
                opt.load_state_dict(tstate["optimizers"][name])
        state_mod.set_rng_state(tstate["rng"])
    start = int(tstate["step"]) if tstate else 0
    bad_streak = int(tstate.get("bad_streak", 0)) if tstate else 0
    tokens_seen = int(tstate.get("tokens_seen", 0)) if tstate else 0

    if tcfg.get("compile"):
        fwd_model = torch.compile(fwd_model)

    # data and schedule
    cache = Path(cfg["data"].get("cache_dir") or run_dir / "data")
    sources = data_mod.open_sources(cfg, tok_dir, cache, progress=cfg["log"]["progress"] and dist.is_main,
                                    is_main=dist.is_main, barrier=dist.barrier)
    for name, src in sources.items():
        if src.vocab_size > mcfg.vocab_size:
            raise SlmkitError(f"data source '{name}': prepared with vocab {src.vocab_size} > model vocab {mcfg.vocab_size}")
    sampler = data_mod.MixtureSampler(sources, cfg["data"]["mix"], int(cfg["seed"]), tcfg["seq_len"],
                                      align=cfg["data"].get("align", "token"))
    sched = Schedule.from_config(cfg)
    if dist.is_main and cfg["log"]["plots"]:
        plot_schedules({cfg["schedule"]["type"]: sched}, run_dir / "schedule.png")

    metrics = MetricsLog(run_dir, dist.is_main, cfg["log"]["tensorboard"], resume_step=start if tstate else None)
    B, T, accum = tcfg["batch_size"], tcfg["seq_len"], tcfg["grad_accum"]
    local_rows = B // dist.world
    micro = local_rows // accum
    tok_per_step = B * T
    fpt = flops_per_token(mcfg, T)
    peak = measured_matmul_flops(device) * (dist.world if device.type == "cpu" else 1)
    milestones: dict[str, str] = {}
    losses: list[float] = []
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else fp8_mod.autocast(fp8_backend, int(cfg["fp8"]["amax_history"])) if precision == "fp8"
                else contextlib.nullcontext())
    inject_nan = set(tcfg.get("_inject_nan_steps") or [])
    decay_to_muon = cfg["optimizer"]["decay"] == "muon"
    last_good: Path | None = resume_path
    save_meta = {"run": cfg.get("name"), "trainer": "slmkit.train"}

    def trainer_state(step: int, opt_states: dict | None = None) -> dict:
        opt_states = opt_states if opt_states is not None else {k: o.state_dict() for k, o in opts.items()}
        return {"step": step, "owners": owners, "optimizers": opt_states,
                "rng": state_mod.rng_state(), "bad_streak": bad_streak, "tokens_seen": tokens_seen,
                "fp8": fp8_mod.scaler_state(model) if precision == "fp8" else None,
                "phase": sched.phase(step), "data": {"seed": int(cfg["seed"]), "next_step": step},
                "config": {k: v for k, v in cfg.items() if not k.startswith("_")}}

    def checkpoint(name: str, step: int) -> Path | None:
        nonlocal last_good
        save_model, opt_states = model, None
        if fsdp:  # gather full (unsharded) model and optimizer state; collective on every rank
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            full = StateDictOptions(full_state_dict=True, cpu_offload=True)
            msd = get_model_state_dict(model, options=full)
            opt_states = {k: get_optimizer_state_dict(model, o, options=full) for k, o in opts.items()}
            if dist.is_main:
                save_model = Transformer(mcfg)
                save_model.load_state_dict(msd)
        if not dist.is_main:
            dist.barrier()
            return None
        path = state_mod.save(ckpt_root, name, save_model, trainer_state(step, opt_states), tokenizer_dir=tok_dir,
                              meta=dict(save_meta, step=step))
        state_mod.prune(ckpt_root, int(cfg["checkpoint"]["keep_last"]))
        last_good = path
        dist.barrier()
        return path

    every = int(cfg["checkpoint"]["every"])
    log_every = int(cfg["log"]["every"])
    want_milestones = set(cfg["checkpoint"].get("milestones") or [])
    model.train()
    t0 = time.perf_counter()
    setup_s = t0 - t_setup
    window_t, window_tokens = t0, 0
    stopped_by = None
    step = start
    last_record: dict = {}
    with StopFlag() as stop, _progress(cfg["log"]["progress"] and dist.is_main, sched.total, start) as prog:
        task = prog.add_task("train", total=sched.total, completed=start, info="") if prog else None
        for step in range(start, sched.total):
            phase = sched.phase(step)
            if step == sched.decay_start and phase == "decay":
                from_it = resume_path is not None and start == step and \
                    Path(resume_path).resolve() == (ckpt_root / "stable-end").resolve()
                if "stable-end" in want_milestones and not from_it:
                    milestones["stable-end"] = str(checkpoint("stable-end", step))
                if decay_to_muon and "muon" not in opts:
                    opts, owners = optim_mod.switch_to_muon(model, cfg, opts, device)
            rows = torch.from_numpy(sampler.batch(step, phase, B, dist.rank, dist.world)).to(device)
            x_all, y_all = rows[:, :-1], rows[:, 1:]
            loss_sum = torch.zeros((), device=device)
            for i in range(accum):
                x, y = x_all[i * micro:(i + 1) * micro], y_all[i * micro:(i + 1) * micro]
                sync = contextlib.nullcontext() if (i == accum - 1 or not dist.enabled or
                                                    cfg["distributed"]["strategy"] != "ddp") else fwd_model.no_sync()
                with sync:
                    with autocast:
                        logits = fwd_model(x)
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
                    if step in inject_nan:
                        loss = loss * float("nan")
                    (loss / accum).backward()
                loss_sum += loss.detach() / accum
            loss_mean = dist.mean(loss_sum)
            clip = float(tcfg["grad_clip"])
            params = [p for p in model.parameters() if p.grad is not None]
            if clip > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
            else:
                gnorm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))
            loss_val = float(loss_mean)
            gnorm_val = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
            lr = sched.lr_at(step)
            finite = math.isfinite(loss_val) and math.isfinite(gnorm_val)
            if finite:
                optim_mod.set_lr(opts, lr)
                for opt in opts.values():
                    opt.step()
                bad_streak = 0
            else:
                bad_streak += 1
            optim_mod.zero_grad(opts)
            tokens_seen += tok_per_step
            window_tokens += tok_per_step
            losses.append(loss_val)
            now = time.perf_counter()
            record = {"step": step, "loss": loss_val, "lr": lr, "grad_norm": gnorm_val, "phase": phase,
                      "tokens": tokens_seen}
            if not finite:
                record["skipped"] = True
            if (step + 1) % log_every == 0 or step == sched.total - 1 or not finite:
                dt = max(now - window_t, 1e-9)
                record["tokens_per_s"] = window_tokens / dt
                record["mfu"] = record["tokens_per_s"] * fpt / peak
                window_t, window_tokens = now, 0
                if prog:
                    prog.update(task, completed=step + 1,
                                info=f"loss {loss_val:.4f} lr {lr:.2e} {record['tokens_per_s']:.0f} tok/s "
                                     f"MFU {record['mfu']:.1%}")
            elif prog:
                prog.update(task, completed=step + 1)
            metrics.log(record)
            last_record = record
            if on_step:
                on_step(record)
            if not finite:
                if dist.is_main:
                    import sys

                    print(f"warning: step {step}: non-finite loss/grad norm ({loss_val}, {gnorm_val}); step skipped",
                          file=sys.stderr)
                if bad_streak >= int(tcfg["max_bad_steps"]):
                    metrics.close()
                    raise SlmkitError(f"training stopped at step {step}: {bad_streak} consecutive non-finite losses "
                                      f"(train.max_bad_steps={tcfg['max_bad_steps']}); last good checkpoint: "
                                      f"{last_good or 'none'}")
                continue
            done = step + 1
            interrupted = stop.signal is not None or (stop_after is not None and done >= stop_after)
            if every and done % every == 0 and done < sched.total:
                checkpoint(f"step_{done:07d}", done)
            elif interrupted and done < sched.total:
                checkpoint(f"step_{done:07d}", done)
            if cfg["eval"].get("every") and done % int(cfg["eval"]["every"]) == 0 and tokenizer is not None \
                    and dist.is_main and int(cfg["eval"]["synthetic_heldout"]):
                from slmkit.train.heldout import evaluate_synthetic

                ev = evaluate_synthetic(model, tokenizer, int(cfg["eval"]["synthetic_heldout"]),
                                        int(cfg["eval"]["max_new_tokens"]))
                metrics.log({"step": step, "heldout_accuracy": ev["accuracy"]})
            if interrupted and done < sched.total:
                stopped_by = signal.Signals(stop.signal).name if stop.signal else "stop_after"
                break
    train_s = time.perf_counter() - t0
    final_step = step + 1 if losses else start
    final_path = None
    completed = stopped_by is None and final_step >= sched.total
    if completed and cfg["checkpoint"].get("final", True):
        final_path = checkpoint("final", sched.total)
        milestones["final"] = str(final_path)
    elif stopped_by:
        final_path = last_good
    metrics.close()
    summary = {
        "run_dir": str(run_dir), "steps": sched.total, "start_step": start, "end_step": final_step,
        "completed": completed, "interrupted": stopped_by, "losses": losses,
        "final_loss": float(np.mean([x for x in losses[-max(1, min(10, len(losses))):] if math.isfinite(x)]))
        if losses else None,
        "tokens_per_s": (len(losses) * tok_per_step / train_s) if losses and train_s > 0 else None,
        "mfu": last_record.get("mfu"), "train_seconds": train_s, "setup_seconds": setup_s,
        "checkpoint": str(final_path) if final_path else None, "milestones": milestones,
        "precision": precision, "fp8_backend": fp8_backend, "fp8_layers": len(fp8_layers),
        "optimizers": {k: type(v).__name__ for k, v in opts.items()}, "world_size": dist.world, "threads": threads,
        "params": model.num_params(), "data": data_mod.manifest_summary(sources),
        "tokenizer": str(tok_dir) if tok_dir else None,
    }
    if dist.is_main and completed and tokenizer is not None and int(cfg["eval"]["synthetic_heldout"]):
        from slmkit.train.heldout import evaluate_synthetic

        summary["heldout"] = evaluate_synthetic(model, tokenizer, int(cfg["eval"]["synthetic_heldout"]),
                                                int(cfg["eval"]["max_new_tokens"]))
    if dist.is_main:
        if cfg["log"]["plots"]:
            plot_run(run_dir)
        state_mod.write_summary(run_dir, {k: v for k, v in summary.items() if k != "losses"})
    return summary
