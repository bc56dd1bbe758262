"""Run logging: JSONL metrics (one line per step), TensorBoard events, loss/LR plots, FLOP counts."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import torch

from slmkit.paths import atomic_write_bytes, atomic_write_text

_PEAK: float | None = None


def flops_per_token(model_cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6·N (matmul params incl. the output projection) + attention 12·L·d·T."""
    n = model_cfg.num_params(embeddings=False) + model_cfg.vocab_size * model_cfg.d_model
    attn = 12 * model_cfg.n_layers * model_cfg.n_heads * model_cfg.hd * seq_len
    return 6.0 * n + attn


def measured_matmul_flops(device: torch.device = torch.device("cpu"), n: int = 1024, seconds: float = 0.3) -> float:
    """fp32 matmul FLOP/s this machine reaches right now (cached per process)."""
    global _PEAK
    if _PEAK is not None:
        return _PEAK
    gen = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (saved in checkpoints) alone
    a = torch.randn(n, n, device=device, generator=gen)
    b = torch.randn(n, n, device=device, generator=gen)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    _PEAK = 2 * n**3 * reps / (time.perf_counter() - t0)
    return _PEAK


class MetricsLog:
    """metrics.jsonl (append; on resume, lines at or past the resume step are dropped) + TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            keep = [line for line, rec in _parse_lines(self.path) if rec.get("step", -1) < resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
            except ImportError:
                self.tb = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"train/{key}", value, record["step"])

    def sync(self) -> None:
        """fsync the lines written so far (before a checkpoint that claims those steps are done)."""
        if self.enabled:
            import os

            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _parse_lines(path: Path) -> list[tuple[str, dict]]:
    """(line, record) for each readable line; a line a kill cut short (not JSON) is dropped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append((line, rec))
    return out


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [rec for _, rec in _parse_lines(path)]


def save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_run(run_dir: Path) -> list[Path]:
    """loss.png and lr.png from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    if not rows:
        return []
    steps = [r["step"] for r in rows]
    out = []
    for key, name in (("loss", "loss.png"), ("lr", "lr.png")):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, [r.get(key) for r in rows])
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        save_fig(fig, run_dir / name)
        out.append(run_dir / name)
    return out
