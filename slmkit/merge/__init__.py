"""Model merging: interpolation and task arithmetic one tensor at a time, and λ sweeps (`slmkit merge`)."""

from slmkit.merge.core import interpolation, merge, task_arithmetic

__all__ = ["interpolation", "task_arithmetic", "merge"]
