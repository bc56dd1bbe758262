"""pass@1 for HumanEval/MBPP through slmkit's sandbox instead of HF evaluate's `code_eval`.

`code_eval` must be fetched from the Hub and runs model-written code in-process; ours runs each
program (candidate + "\\n" + tests, exactly as code_eval assembles it) in slmkit.sandbox.
Registered with lm-eval as metric `slmkit_pass_at_1`; `CodeEvalShim` stands in for the
`evaluate.load("code_eval")` object the stock task modules create at import time (their filters and
few-shot samples are still used; their `code_eval`-backed metric is replaced in every task config).
"""

from __future__ import annotations

import contextlib
import sys

from slmkit.errors import SlmkitError

METRIC = "slmkit_pass_at_1"
TIMEOUT_S = 3.0  # code_eval's default per-program timeout


def _sandbox():
    try:
        from slmkit import sandbox
    except ImportError as exc:
        raise SlmkitError(f"code execution needs slmkit.sandbox, which is not available ({exc})") from None
    return sandbox


def programs(references, predictions) -> list[list[str]]:
    """One list of test programs per problem: each candidate followed by the problem's tests."""
    out = []
    for ref, preds in zip(references, predictions):
        cands = [preds] if isinstance(preds, str) else list(preds)
        out.append([f"{c}\n{ref}" for c in cands])
    return out


def pass_at_1(references, predictions, **kwargs) -> float:
    """Mean over problems of the fraction of candidates whose program passes (= pass@1 for n=1)."""
    progs = programs(references, predictions)
    flat = [p for group in progs for p in group]
    if not flat:
        return 0.0
    sandbox = _sandbox()
    if len(flat) == 1:
        passed = [bool(sandbox.check_program(flat[0], TIMEOUT_S))]
    else:
        passed = [r.passed for r in sandbox.run_many(flat, workers=2, timeout=TIMEOUT_S, check=True)]
    scores, i = [], 0
    for group in progs:
        scores.append(sum(passed[i:i + len(group)]) / len(group))
        i += len(group)
    return sum(scores) / len(scores)


def register() -> None:
    """Register `slmkit_pass_at_1` with lm-eval's metric registry (idempotent)."""
    import lm_eval.api.metrics  # noqa: F401 - registers the aggregations ("mean") the metric names
    from lm_eval.api import registry

    if METRIC not in registry.metric_registry:
        registry.register_metric(metric=METRIC, higher_is_better=True, aggregation="mean")(pass_at_1)


class CodeEvalShim:
    """Quacks like `evaluate.load("code_eval")` (compute(references, predictions, k)) but uses the sandbox."""

    preloading = False  # the stock modules' import-time smoke test needs no execution

    def compute(self, references, predictions, k=(1,), **kwargs):
        if CodeEvalShim.preloading:
            return {"pass@1": 0.0}, {}
        ks = [k] if isinstance(k, int) else list(k)
        if any(x != 1 for x in ks):
            raise SlmkitError(f"only pass@1 is supported by the sandboxed code metric (asked for k={ks})")
        return {"pass@1": pass_at_1(references, predictions)}, {}


# lm-eval's HumanEval/MBPP task modules: they call `evaluate.load("code_eval")` when imported
STOCK_CODE_MODULES = ("lm_eval.tasks.humaneval.utils", "lm_eval.tasks.mbpp.utils")


def import_stock_code_modules(names=STOCK_CODE_MODULES) -> None:
    """Import lm-eval's code-task modules (a plain `import`) with `evaluate.load("code_eval")` → CodeEvalShim.

    Their YAML refers to functions in them (prediction filters, MBPP's few-shot samples); importing them
    stock needs the Hub. The task configs slmkit writes name these functions by module path, so lm-eval
    finds them in sys.modules and never executes the modules itself.
    """
    import importlib

    for name in names:
        if name not in sys.modules:
            with offline_code_eval(smoke_test=True):
                importlib.import_module(name)


@contextlib.contextmanager
def offline_code_eval(smoke_test: bool = False):
    """While active, `evaluate.load("code_eval")` returns the sandboxed CodeEvalShim (nothing fetched).

    smoke_test: the importing module's own check that code runs returns at once (nothing is executed)."""
    import evaluate

    original = evaluate.load

    def load(name, *args, **kwargs):
        return CodeEvalShim() if name == "code_eval" else original(name, *args, **kwargs)

    evaluate.load = load
    CodeEvalShim.preloading = smoke_test
    try:
        yield
    finally:
        evaluate.load = original
        CodeEvalShim.preloading = False
