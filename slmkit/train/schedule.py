"""Learning-rate schedules as pure functions of the step (so resume needs only the step).

WSD (Warmup-Stable-Decay, MiniCPM / Xmodel-2.5): linear warmup, constant plateau, then a decay of
chosen shape down to a floor. Cosine is there for comparison. `phase(step)` tells the trainer
when the decay starts (data mixture switch, AdamW→Muon hand-over, `stable-end` milestone) and when
the optional long-context stage begins: `long` steps after `total`, with their own small WSD
(warmup, plateau at the stage's LR, decay of the same shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _steps(value: float, total: int) -> int:
    """A fraction (< 1) of `total`, or an absolute step count (>= 1)."""
    return int(round(value * total)) if value < 1 else int(value)


@dataclass
class Schedule:
    kind: str
    lr: float
    total: int
    warmup: int
    decay: int
    shape: str = "1-sqrt"
    floor: float = 0.0  # min lr as a fraction of lr
    long: "Schedule | None" = None  # the long-context stage, run after `total` steps

    @classmethod
    def from_config(cls, cfg: dict) -> "Schedule":
        s, total = cfg["schedule"], int(cfg["train"]["steps"])
        decay = _steps(s["decay"], total) if s["type"] == "wsd" else 0
        warmup = _steps(s["warmup"], total)
        warmup = min(warmup, total - decay)
        long = None
        lc = cfg.get("long_context") or {}
        if int(lc.get("steps") or 0) > 0:
            n = int(lc["steps"])
            lr = float(lc["lr"]) if lc.get("lr") is not None else 0.1 * float(s["lr"])
            ldecay = _steps(float(lc.get("decay", 0.3)), n)
            lwarm = min(_steps(float(lc.get("warmup", 0.1)), n), n - ldecay)
            long = cls("wsd", lr, n, lwarm, ldecay, s["decay_shape"], float(s["min_lr_ratio"]))
        return cls(s["type"], float(s["lr"]), total, warmup, decay, s["decay_shape"], float(s["min_lr_ratio"]), long)

    @property
    def steps(self) -> int:
        """All steps of the run: the schedule's plus the long-context stage's."""
        return self.total + (self.long.total if self.long else 0)

    @property
    def long_start(self) -> int:
        """First step of the long-context stage (== steps when there is none)."""
        return self.total if self.long else self.steps

    @property
    def decay_start(self) -> int:
        """First step of the decay phase (== total when there is none)."""
        return self.total - self.decay if self.kind == "wsd" else self.total

    def phase(self, step: int) -> str:
        if self.long is not None and step >= self.total:
            return "long"
        return "decay" if self.kind == "wsd" and self.decay > 0 and step >= self.decay_start else "stable"

    def factor(self, step: int) -> float:
        """lr multiplier in [floor, 1] at 0-based `step`."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            span = max(self.total - self.warmup, 1)
            t = min((step - self.warmup) / span, 1.0)
            return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))
        if step < self.decay_start or self.decay == 0:
            return 1.0
        t = min((step - self.decay_start + 1) / self.decay, 1.0)  # reaches the floor on the last step
        if self.shape == "linear":
            g = 1 - t
        elif self.shape == "cosine":
            g = 0.5 * (1 + math.cos(math.pi * t))
        elif self.shape == "1-sqrt":
            g = 1 - math.sqrt(t)
        else:  # exponential: from 1 to the floor (or 1e-3 when the floor is 0) geometrically
            end = self.floor if self.floor > 0 else 1e-3
            return self.floor + (1 - self.floor) * ((end ** t - end) / (1 - end))
        return self.floor + (1 - self.floor) * g

    def lr_at(self, step: int) -> float:
        if self.long is not None and step >= self.total:
            return self.long.lr_at(step - self.total)
        return self.lr * self.factor(step)


def plot_schedules(schedules: dict[str, Schedule], path) -> None:
    """PNG of lr vs step for each named schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slmkit.paths import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, sch in schedules.items():
        xs = list(range(sch.steps))
        ax.plot(xs, [sch.lr_at(i) for i in xs], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
