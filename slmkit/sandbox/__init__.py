"""Run untrusted (model-written) Python: a dropped uid, namespaces, seccomp, Landlock, rlimits, and a
completion report sent by the trusted prelude only after the program ran to its end. Used by the
code metrics of evaluation (HumanEval / MBPP pass@1); runner.py explains the walls and their limits."""

from slmkit.sandbox.runner import STATUSES, SandboxResult, check_program, run_checked, run_many, run_program

__all__ = ["SandboxResult", "STATUSES", "run_program", "run_checked", "check_program", "run_many"]
