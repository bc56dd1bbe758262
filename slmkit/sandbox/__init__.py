"""Run untrusted (model-written) Python: a dropped uid, namespaces, seccomp, rlimits, a pass signal the
program cannot forge. Used by the code metrics of evaluation (HumanEval / MBPP pass@1)."""

from slmkit.sandbox.runner import STATUSES, SandboxResult, check_program, run_checked, run_many, run_program

__all__ = ["SandboxResult", "STATUSES", "run_program", "run_checked", "check_program", "run_many"]
