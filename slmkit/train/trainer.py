"""The trainer: `Trainer` (setup → `train_step` per step → `checkpoint` / eval hooks), and `run`, the
entry point shared by `slmkit train`, the Python API and torchrun.

Each step: (maybe) cross a phase boundary → draw the global batch for (seed, step) → forward/backward
over micro-batches → clip → set every group's LR from the schedule → optimizer step(s), skipped
when the loss or gradient norm is non-finite → log → checkpoint. Everything a step depends on is
either a function of the step or saved in the checkpoint, which is what makes `--resume` bit-exact.

No host sync per step: the loss, gradient norm and finiteness stay on the device until a flush
(log steps, checkpoints, evals, the last step, a stop request) reads all pending steps at once; the
non-finite skip happens inside the optimizers (see optim.step). Batches are drawn one step ahead
in a background thread (data.Prefetcher).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass
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


COMPILE_MIN_CPU_STEPS = 200  # `compile: auto` on CPU: shorter runs do not earn back the compile time


def want_compile(setting, device: torch.device, steps: int) -> tuple[bool, str]:
    """(compile?, why) for train.compile = true | false | auto."""
    if setting is True or setting == "true":
        return True, "train.compile=true"
    if setting in (False, None, "false"):
        return False, "train.compile=false"
    if device.type == "cuda":
        return True, "auto: CUDA"
    import shutil

    if device.type == "cpu" and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("c++")):
        return False, "auto: no C/C++ compiler for inductor's CPU code"
    if steps < COMPILE_MIN_CPU_STEPS:
        return False, f"auto: {steps} steps < {COMPILE_MIN_CPU_STEPS} (compiling would cost more than it saves)"
    return True, "auto: CPU with a C++ compiler"


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


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn())


@dataclass
class PendingStep:
    """A finished step whose numbers are still device tensors (read at the next flush)."""

    step: int
    phase: str
    lr: float
    tokens: int
    loss: torch.Tensor
    grad_norm: torch.Tensor
    finite: torch.Tensor


# ---------------------------------------------------------------- the trainer

class Trainer:
    """One training run. Construction does the setup (tokenizer, model, resume state, optimizers,
    data, schedule, metrics); `run()` loops `train_step` and handles checkpoints, evals and stops."""

    def __init__(self, cfg: dict, run_dir: str | Path, resume: bool | str | Path = False, *,
                 dist: dist_mod.Dist | None = None, stop_after: int | None = None,
                 on_step: Callable[[dict], None] | None = None) -> None:
        self.t_setup = time.perf_counter()
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.dist = dist if dist is not None else dist_mod.Dist()
        self.device = self.dist.device
        self.tcfg = cfg["train"]
        self.stop_after, self.on_step = stop_after, on_step
        self.threads = set_threads(self.tcfg.get("threads", "auto")) if self.device.type == "cpu" else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_root = self.run_dir / "checkpoints"
        if self.dist.is_main:
            state_mod.prune_orphans(self.ckpt_root)
            atomic_write_json(self.run_dir / "config.json", {k: v for k, v in cfg.items() if not k.startswith("_")})
        self.setup_tokenizer()
        self.setup_model(resume)
        self.setup_optimizers()
        self.setup_data()
        self.setup_metrics()
        self.setup_step_fn()

    # ------------------------------------------------------------ setup
    def setup_tokenizer(self) -> None:
        self.tok_dir = resolve_tokenizer(self.cfg, self.run_dir, self.dist)
        self.tokenizer = None
        if self.tok_dir is not None:
            from slmkit.model.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(self.tok_dir)
        self.mcfg = build_model_config(self.cfg, self.tokenizer)
        t, world = self.tcfg, self.dist.world
        if t["seq_len"] > self.mcfg.max_seq_len:
            raise SlmkitError(f"config: field 'train.seq_len'={t['seq_len']} exceeds model.max_seq_len={self.mcfg.max_seq_len}")
        if t["batch_size"] % (world * t["grad_accum"]):
            raise SlmkitError(f"config: field 'train.batch_size'={t['batch_size']} must be divisible by "
                              f"world_size×grad_accum={world * t['grad_accum']}")

    def setup_model(self, resume) -> None:
        """Model (same seed on every rank), the trainer state to resume from, FP8, device, wrapping."""
        cfg, dist = self.cfg, self.dist
        torch.manual_seed(int(cfg["seed"]))
        self.model = Transformer(self.mcfg)
        self.resume_path, self.tstate, tensors = None, None, None
        if resume is True:  # the newest checkpoint that loads cleanly (damaged ones skipped, with a warning)
            found = state_mod.open_resume(self.run_dir)
            if found:
                self.resume_path, tensors, self.tstate = found
        elif resume:  # a named checkpoint: it must load cleanly
            self.resume_path = Path(resume)
            tensors, self.tstate = state_mod.load_verified(self.resume_path)
        if tensors is not None:
            from slmkit.model.checkpoint import load_weights_checked

            load_weights_checked(self.model, tensors, self.resume_path / "model.safetensors")
            if dist.is_main:
                print(f"train: resuming from {self.resume_path} (step {int(self.tstate['step'])})", file=sys.stderr)
        self.precision = self.tcfg["precision"]
        self.fp8_backend, self.fp8_layers = None, []
        if self.precision == "fp8":
            self.fp8_backend, self.fp8_layers = fp8_mod.convert(self.model, cfg, self.device)
            if self.tstate and self.tstate.get("fp8"):
                fp8_mod.load_scaler_state(self.model, self.tstate["fp8"])
        self.model.to(self.device)
        self.strategy = cfg["distributed"]["strategy"]
        self.fsdp = dist.enabled and self.strategy == "fsdp"
        self.fwd_model = dist_mod.wrap(self.model, dist, self.strategy)  # FSDP swaps in DTensor params
        ts = self.tstate
        self.start = int(ts["step"]) if ts else 0
        self.bad_streak = int(ts.get("bad_streak", 0)) if ts else 0
        self.tokens_seen = int(ts.get("tokens_seen", 0)) if ts else 0

    def setup_optimizers(self) -> None:
        ts = self.tstate
        self.owners = ts["owners"] if ts else optim_mod.initial_owners(self.model)
        self.opts = optim_mod.build(self.model, self.cfg, self.owners, self.device)
        if ts:
            for name, opt in self.opts.items():
                if name not in ts["optimizers"]:
                    raise SlmkitError(f"{self.resume_path}: trainer state has no '{name}' optimizer (owners disagree)")
                if self.fsdp:
                    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                    set_optimizer_state_dict(self.model, opt, ts["optimizers"][name],
                                             options=StateDictOptions(full_state_dict=True))
                else:
                    opt.load_state_dict(ts["optimizers"][name])
            state_mod.set_rng_state(ts["rng"])
        self.decay_to_muon = self.cfg["optimizer"]["decay"] == "muon"

    def setup_data(self) -> None:
        cfg, dist = self.cfg, self.dist
        cache = Path(cfg["data"].get("cache_dir") or self.run_dir / "data")
        self.sources = data_mod.open_sources(cfg, self.tok_dir, cache, progress=cfg["log"]["progress"] and dist.is_main,
                                             is_main=dist.is_main, barrier=dist.barrier)
        for name, src in self.sources.items():
            if src.vocab_size > self.mcfg.vocab_size:
                raise SlmkitError(f"data source '{name}': prepared with vocab {src.vocab_size} > model vocab "
                                  f"{self.mcfg.vocab_size}")
        self.seq_len = int(self.tcfg["seq_len"])
        self.sampler = data_mod.MixtureSampler(self.sources, cfg["data"]["mix"], int(cfg["seed"]), self.seq_len,
                                               align=cfg["data"].get("align", "token"))
        self.sched = Schedule.from_config(cfg)
        if dist.is_main and cfg["log"]["plots"]:
            plot_schedules({cfg["schedule"]["type"]: self.sched}, self.run_dir / "schedule.png")
        self.batch_size, self.accum = int(self.tcfg["batch_size"]), int(self.tcfg["grad_accum"])
        self.total_steps = self.sched.steps
        self.long_sampler = None
        if self.sched.long is not None:
            from slmkit.train.config import long_rows

            lc, mix = cfg["long_context"], cfg["data"]["mix"]
            self.long_rows, self.long_seq_len = long_rows(cfg), int(lc["seq_len"])
            if self.long_rows % (dist.world * self.accum):
                raise SlmkitError(f"config: long_context: {self.long_rows} rows per step must be divisible by "
                                  f"world_size×grad_accum={dist.world * self.accum}")
            long_mix = mix.get("long") or mix.get("decay") or mix["stable"]
            self.long_sampler = data_mod.MixtureSampler(self.sources, {"long": long_mix}, int(cfg["seed"]),
                                                        self.long_seq_len, align=lc.get("align", "within_doc"))
            if self.start > self.sched.long_start:  # resumed inside the stage
                self.enter_long_context()
        self.prefetch = None
        from slmkit.train.gate_text import choose_gate_text

        chosen = choose_gate_text(cfg, self.sources, self.tokenizer)
        self.gate_text, self.gate_text_source = chosen if chosen else (None, None)

    def rows_at(self, step: int) -> tuple[int, int]:
        """(global sequences, sequence length) of the batch at `step`."""
        if self.long_sampler is not None and step >= self.sched.long_start:
            return self.long_rows, self.long_seq_len
        return self.batch_size, self.seq_len

    def enter_long_context(self) -> None:
        """The model settings of the long-context stage: RoPE base and context length (the checkpoint
        and every export record them: HF rope_theta / max_position_embeddings, GGUF, ONNX)."""
        lc = self.cfg["long_context"]
        if lc.get("rope_theta") is not None:
            self.model.cfg.rope_theta = float(lc["rope_theta"])
        self.model.cfg.max_seq_len = max(self.model.cfg.max_seq_len, int(lc["seq_len"]))

    def setup_metrics(self) -> None:
        cfg, dist = self.cfg, self.dist
        self.metrics = MetricsLog(self.run_dir, dist.is_main, cfg["log"]["tensorboard"],
                                  resume_step=self.start if self.tstate else None)
        self.fpt = flops_per_token(self.mcfg, self.seq_len)
        self.peak = measured_matmul_flops(self.device) * (dist.world if self.device.type == "cpu" else 1)
        self.milestones: dict[str, str] = {}
        self.losses: list[float] = []
        self.pending: list[PendingStep] = []
        self.run_tokens = 0
        self.last_record: dict = {}
        self.last_good: Path | None = self.resume_path
        self.window_t, self.window_tokens = time.perf_counter(), 0
        self.inject_nan = set(self.tcfg.get("_inject_nan_steps") or [])
        self.save_meta = {"run": self.cfg.get("name"), "trainer": "slmkit.train"}

    def setup_step_fn(self) -> None:
        """The forward+loss function (compiled when train.compile says so) and the optimizer skip mode."""
        if self.precision == "bf16":
            self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16)
        elif self.precision == "fp8":
            self.autocast = fp8_mod.autocast(self.fp8_backend, int(self.cfg["fp8"]["amax_history"]))
        else:
            self.autocast = contextlib.nullcontext()
        self.compiled, why = want_compile(self.tcfg.get("compile", "auto"), self.device, self.sched.steps)
        self.compile_note = why
        self.loss_fn = torch.compile(self.forward_loss) if self.compiled else self.forward_loss
        if self.compiled and self.dist.is_main:
            print(f"train: torch.compile on ({why}); the first step compiles", file=sys.stderr)
        self.sync_free = not self.fsdp and all(optim_mod.skips_without_sync(o) for o in self.opts.values())

    # ------------------------------------------------------------ one step
    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            logits = self.fwd_model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    def _eager_fallback(self, exc: Exception) -> None:
        if self.dist.is_main:
            print(f"warning: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                  "training continues eager", file=sys.stderr)
        self.compiled, self.loss_fn = False, self.forward_loss
        self.compile_note = f"fell back to eager: {type(exc).__name__}"
        optim_mod.zero_grad(self.opts)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, poison: bool = False) -> torch.Tensor:
        """Backward over the local rows in grad_accum micro-batches; returns the mean loss (a device
        tensor, averaged over ranks). poison: multiply the loss by NaN (tests of the skip logic)."""
        micro = x.shape[0] // self.accum
        loss_sum = torch.zeros((), device=self.device)
        ddp = self.dist.enabled and self.strategy == "ddp"
        for i in range(self.accum):
            xs, ys = x[i * micro:(i + 1) * micro], y[i * micro:(i + 1) * micro]
            sync = contextlib.nullcontext() if (i == self.accum - 1 or not ddp) else self.fwd_model.no_sync()
            with sync:
                loss = self.loss_fn(xs, ys)
                if poison:
                    loss = loss * float("nan")
                (loss / self.accum).backward()
            loss_sum += loss.detach() / self.accum
        return self.dist.mean(loss_sum)

    def grad_norm(self) -> torch.Tensor:
        """Clip to train.grad_clip (when > 0); the total norm before clipping, as a plain tensor."""
        clip = float(self.tcfg["grad_clip"])
        params = [p for p in self.model.parameters() if p.grad is not None]
        if clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            gnorm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))
        return gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm

    def host_batch(self, step: int) -> torch.Tensor:
        """This rank's rows of the global batch at `step` (CPU tensor; pinned when training on CUDA)."""
        phase = self.sched.phase(step)
        sampler = self.long_sampler if phase == "long" else self.sampler
        rows = torch.from_numpy(sampler.batch(step, phase, self.rows_at(step)[0], self.dist.rank, self.dist.world))
        return rows.pin_memory() if self.device.type == "cuda" else rows

    def batch(self, step: int) -> torch.Tensor:
        rows = self.prefetch.get(step) if self.prefetch is not None else self.host_batch(step)
        return rows.to(self.device, non_blocking=True)

    def begin_step(self, step: int) -> None:
        """Phase boundaries: at the first decay step the `stable-end` milestone and the Muon hand-over;
        at the first long-context step the `decay-end` milestone, then the stage's model settings."""
        if step == self.sched.decay_start and self.sched.phase(step) == "decay":
            self.milestone("stable-end", step)
            if self.decay_to_muon and "muon" not in self.opts:
                self.opts, self.owners = optim_mod.switch_to_muon(self.model, self.cfg, self.opts, self.device)
                self.sync_free = not self.fsdp and all(optim_mod.skips_without_sync(o) for o in self.opts.values())
        if self.long_sampler is not None and step == self.sched.long_start:
            self.milestone("decay-end", step)
            self.enter_long_context()

    def train_step(self, step: int) -> PendingStep:
        """One optimizer step at `step` (0-based); its numbers stay on the device until `flush`."""
        self.begin_step(step)
        rows = self.batch(step)
        x, y = rows[:, :-1], rows[:, 1:]
        try:
            loss = self.forward_backward(x, y, poison=step in self.inject_nan)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: say so once, run eager
            if not self.compiled:
                raise
            self._eager_fallback(exc)
            loss = self.forward_backward(x, y, poison=step in self.inject_nan)
        gnorm = self.grad_norm()
        finite = torch.isfinite(loss) & torch.isfinite(gnorm)
        lr = self.sched.lr_at(step)
        optim_mod.set_lr(self.opts, lr)
        optim_mod.step(self.opts, finite, self.sync_free)
        optim_mod.zero_grad(self.opts)
        tokens = self.rows_at(step)[0] * x.shape[1]
        self.tokens_seen += tokens
        self.window_tokens += tokens
        self.run_tokens += tokens
        pending = PendingStep(step, self.sched.phase(step), lr, self.tokens_seen, loss.detach(), gnorm.detach(),
                              finite)
        self.pending.append(pending)
        return pending

    # ------------------------------------------------------------ logging
    def flush(self, prog=None, task=None) -> bool:
        """Read every pending step at once (one host sync): metrics, warnings, the bad-step stop.
        Returns whether the last of them was finite."""
        if not self.pending:
            return True
        values = torch.stack([torch.stack([p.loss.float(), p.grad_norm.float(), p.finite.float()])
                              for p in self.pending]).tolist()
        now = time.perf_counter()
        last_ok = True
        for i, (p, (loss, gnorm, finite)) in enumerate(zip(self.pending, values)):
            ok = bool(finite)
            record = {"step": p.step, "loss": loss, "lr": p.lr, "grad_norm": gnorm, "phase": p.phase,
                      "tokens": p.tokens}
            if not ok:
                record["skipped"] = True
            if i == len(self.pending) - 1:
                dt = max(now - self.window_t, 1e-9)
                record["tokens_per_s"] = self.window_tokens / dt
                fpt = self.fpt if p.phase != "long" else flops_per_token(self.model.cfg, self.long_seq_len)
                record["mfu"] = record["tokens_per_s"] * fpt / self.peak
                self.window_t, self.window_tokens = now, 0
                if prog:
                    prog.update(task, completed=p.step + 1,
                                info=f"loss {loss:.4f} lr {p.lr:.2e} {record['tokens_per_s']:.0f} tok/s "
                                     f"MFU {record['mfu']:.1%}")
            self.metrics.log(record)
            self.losses.append(loss)
            self.last_record = record
            if self.on_step:
                self.on_step(record)
            if ok:
                self.bad_streak = 0
            else:
                self.bad_streak += 1
                if self.dist.is_main:
                    print(f"warning: step {p.step}: non-finite loss/grad norm ({loss}, {gnorm}); step skipped",
                          file=sys.stderr)
                if self.bad_streak >= int(self.tcfg["max_bad_steps"]):
                    self.pending = []
                    self.metrics.close()
                    raise SlmkitError(f"training stopped at step {p.step}: {self.bad_streak} consecutive non-finite "
                                      f"losses (train.max_bad_steps={self.tcfg['max_bad_steps']}); last good "
                                      f"checkpoint: {self.last_good or 'none'}")
            last_ok = ok
        self.pending = []
        return last_ok

    # ------------------------------------------------------------ checkpoints and evals
    def trainer_state(self, step: int, opt_states: dict | None = None) -> dict:
        opt_states = opt_states if opt_states is not None else {k: o.state_dict() for k, o in self.opts.items()}
        return {"step": step, "owners": self.owners, "optimizers": opt_states,
                "rng": state_mod.rng_state(), "bad_streak": self.bad_streak, "tokens_seen": self.tokens_seen,
                "fp8": fp8_mod.scaler_state(self.model) if self.precision == "fp8" else None,
                "phase": self.sched.phase(step), "data": {"seed": int(self.cfg["seed"]), "next_step": step},
                "config": {k: v for k, v in self.cfg.items() if not k.startswith("_")}}

    def checkpoint(self, name: str, step: int) -> Path | None:
        """Save RUN/checkpoints/<name> (state to run `step` next); collective under FSDP; rank 0 writes."""
        self.flush()
        self.metrics.sync()
        save_model, opt_states = self.model, None
        if self.fsdp:  # gather full (unsharded) model and optimizer state; collective on every rank
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            full = StateDictOptions(full_state_dict=True, cpu_offload=True)
            msd = get_model_state_dict(self.model, options=full)
            opt_states = {k: get_optimizer_state_dict(self.model, o, options=full) for k, o in self.opts.items()}
            if self.dist.is_main:
                save_model = Transformer(self.mcfg)
                save_model.load_state_dict(msd)
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        path = state_mod.save(self.ckpt_root, name, save_model, self.trainer_state(step, opt_states),
                              tokenizer_dir=self.tok_dir, meta=dict(self.save_meta, step=step, gate_text=self.gate_text_source),
                              gate_text=self.gate_text)
        state_mod.prune(self.ckpt_root, int(self.cfg["checkpoint"]["keep_last"]))
        self.last_good = path
        self.dist.barrier()
        return path

    def milestone(self, name: str, step: int) -> None:
        """A named checkpoint at a phase boundary (unless this run resumed from exactly that one)."""
        if name not in set(self.cfg["checkpoint"].get("milestones") or []):
            return
        if self.resume_path is not None and self.start == step and \
                Path(self.resume_path).resolve() == (self.ckpt_root / name).resolve():
            return
        self.milestones[name] = str(self.checkpoint(name, step))

    def heldout_eval(self) -> dict | None:
        """Synthetic held-out exact match (rank 0; None when off or without a tokenizer)."""
        n = int(self.cfg["eval"]["synthetic_heldout"])
        if not n or self.tokenizer is None or not self.dist.is_main:
            return None
        from slmkit.train.heldout import evaluate_synthetic

        return evaluate_synthetic(self.model, self.tokenizer, n, int(self.cfg["eval"]["max_new_tokens"]))

    def maybe_eval(self, step: int) -> None:
        every = int(self.cfg["eval"].get("every") or 0)
        if every and (step + 1) % every == 0:
            ev = self.heldout_eval()
            if ev is not None:
                self.metrics.log({"step": step, "heldout_accuracy": ev["accuracy"]})

    # ------------------------------------------------------------ the loop
    def needs_flush(self, step: int, stop: StopFlag) -> bool:
        """Steps after which the loop needs the numbers: log, checkpoint, eval, last step, stop."""
        done, total = step + 1, self.total_steps
        every = int(self.cfg["checkpoint"]["every"])
        eval_every = int(self.cfg["eval"].get("every") or 0)
        return (done % int(self.cfg["log"]["every"]) == 0 or done >= total or (every and done % every == 0)
                or (eval_every and done % eval_every == 0) or stop.signal is not None
                or (self.stop_after is not None and done >= self.stop_after))

    def run(self) -> dict:
        """Train from `start` to the end of the schedule (or a stop); returns the summary."""
        t0 = time.perf_counter()
        self.setup_seconds = t0 - self.t_setup
        self.window_t, self.window_tokens = t0, 0
        self.model.train()
        every = int(self.cfg["checkpoint"]["every"])
        total = self.total_steps
        stopped_by = None
        step = self.start
        self.prefetch = data_mod.Prefetcher(self.host_batch, self.start, total)
        try:
            with StopFlag() as stop, _progress(self.cfg["log"]["progress"] and self.dist.is_main) as prog:
                task = prog.add_task("train", total=total, completed=self.start, info="") if prog else None
                for step in range(self.start, total):
                    self.train_step(step)
                    if not self.needs_flush(step, stop):
                        if prog:
                            prog.update(task, completed=step + 1)
                        continue
                    if not self.flush(prog, task):
                        continue  # a skipped step: no checkpoint, eval or stop on it
                    done = step + 1
                    interrupted = stop.signal is not None or (self.stop_after is not None and done >= self.stop_after)
                    if done < total and ((every and done % every == 0) or interrupted):
                        self.checkpoint(f"step_{done:07d}", done)
                    self.maybe_eval(step)
                    if interrupted and done < total:
                        stopped_by = signal.Signals(stop.signal).name if stop.signal else "stop_after"
                        break
        finally:
            self.prefetch.close()
            self.prefetch = None
        self.flush()
        return self.finish(step, stopped_by, time.perf_counter() - t0)

    def finish(self, step: int, stopped_by: str | None, train_s: float) -> dict:
        cfg, total = self.cfg, self.total_steps
        losses = self.losses
        final_step = step + 1 if losses else self.start
        final_path = None
        completed = stopped_by is None and final_step >= total
        if completed and cfg["checkpoint"].get("final", True):
            final_path = self.checkpoint("final", total)
            self.milestones["final"] = str(final_path)
        elif stopped_by:
            final_path = self.last_good
        self.metrics.close()
        finite = [x for x in losses[-max(1, min(10, len(losses))):] if math.isfinite(x)]
        summary = {
            "run_dir": str(self.run_dir), "steps": total, "start_step": self.start, "end_step": final_step,
            "completed": completed, "interrupted": stopped_by, "losses": losses,
            "final_loss": float(np.mean(finite)) if finite else None,
            "tokens_per_s": (self.run_tokens / train_s) if losses and train_s > 0 else None,
            "mfu": self.last_record.get("mfu"), "train_seconds": train_s, "setup_seconds": self.setup_seconds,
            "checkpoint": str(final_path) if final_path else None, "milestones": self.milestones,
            "rope_theta": self.model.cfg.rope_theta, "max_seq_len": self.model.cfg.max_seq_len,
            "precision": self.precision, "fp8_backend": self.fp8_backend, "fp8_layers": len(self.fp8_layers),
            "compiled": self.compiled, "compile": self.compile_note,
            "optimizers": {k: type(v).__name__ for k, v in self.opts.items()}, "world_size": self.dist.world,
            "threads": self.threads, "params": self.model.num_params(), "data": data_mod.manifest_summary(self.sources),
            "tokenizer": str(self.tok_dir) if self.tok_dir else None,
        }
        if completed:
            heldout = self.heldout_eval()
            if heldout is not None:
                summary["heldout"] = heldout
        if self.dist.is_main:
            if cfg["log"]["plots"]:
                plot_run(self.run_dir)
            state_mod.write_summary(self.run_dir, {k: v for k, v in summary.items() if k != "losses"})
        return summary


def run(cfg: dict, run_dir: str | Path, resume: bool | str | Path = False, *,
        stop_after: int | None = None, on_step: Callable[[dict], None] | None = None) -> dict:
    """Train per `cfg` into `run_dir`; returns the summary dict (also written to RUN/summary.json).

    resume: False, True (latest checkpoint in run_dir) or a checkpoint folder (e.g. a `stable-end`
    milestone to branch a decay run from). stop_after: behave as if SIGTERM arrived after that step.
    on_step: called with each step's metrics record (at the flush after it, in step order).
    """
    dist = dist_mod.init(cfg.get("device", "auto"))
    try:
        return Trainer(cfg, run_dir, resume, dist=dist, stop_after=stop_after, on_step=on_step).run()
    finally:
        dist.close()
