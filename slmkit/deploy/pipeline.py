"""`slmkit deploy`: one model → exported artifacts → the same documents scored on each → latency on this
machine → paired statistics → the artifact to ship, in one resumable run.

Order of work: exports (parity-gated), latency (one fresh process per artifact), then evaluation task by
task with every artifact in turn (so a run cut short still has whole, comparable tasks), then agent
episodes, then the report. Every step is recorded in OUT/state.json as it finishes (slmkit.deploy.state).
Failures — a bad --types entry, a failed gate, a task that errors — are named in one line each and shown
in the report; the rest goes on.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from slmkit.deploy.spec import ArtifactSpec, default_reference, parse_types
from slmkit.deploy.state import State
from slmkit.errors import SlmkitError

DEFAULT_TYPES = "f32,f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0,onnx-int8"


@dataclass
class DeployConfig:
    model: str
    out: str
    types: str = DEFAULT_TYPES
    suite: str = "xmodel13"
    tasks: str | None = None
    agents: str | None = None
    limit: int | None = None
    budget_minutes: float | None = None
    max_drop: float = 1.0
    reference: str | None = None
    gate_text: str | None = None
    threads: int = 2
    batch_size: int | None = None
    seed: int = 1234
    pilot_limit: int = 1
    bootstrap: int = 2000
    min_ci_docs: int = 20
    latency: bool = True
    prompt_tokens: int = 512
    new_tokens: int = 128
    repeats: int = 3
    retry_failed: bool = False
    report_only: bool = False
    bounds: dict[str, dict[str, float | None]] = field(default_factory=dict)
    data: str = "auto"
    argv: list[str] | None = field(default=None, repr=False)


def resolve_model(model: str) -> Path:
    """A model folder, or a name `slmkit models pull` knows (pulled now if needed: its fp32 HF folder)."""
    path = Path(model).expanduser()
    if path.exists():
        if path.suffix == ".gguf" or (path / "model.onnx").exists():
            raise SlmkitError(f"{model}: deploy starts from the model (slmkit checkpoint or HF folder), not an "
                              f"exported artifact")
        return path.resolve()
    from slmkit.hub import MODELS, pull

    if model in MODELS:
        return Path(pull(model)["hf_dir"]).resolve()
    raise SlmkitError(f"{model}: model not found (a checkpoint / HF folder, or one of: {', '.join(MODELS)})")


def safe(name: str) -> str:
    return name.replace(":", "-")


class Deploy:
    def __init__(self, cfg: DeployConfig, say: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.say = say or _console_say()
        self.out = Path(cfg.out)
        self.failures: list[str] = []
        self._lms: dict[str, Any] = {}

    def fail(self, line: str) -> None:
        self.failures.append(line)
        self.say(f"[failed] {line}")

    # ---- setup -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        from slmkit.evaluate.suites import load_suite, select

        cfg = self.cfg
        for name, value in (("--limit", cfg.limit), ("--pilot-limit", cfg.pilot_limit)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SlmkitError(f"{name} {value!r}: must be a whole number ≥ 1")
        if cfg.limit is not None and cfg.budget_minutes is not None:
            raise SlmkitError("give --limit or --budget-minutes, not both")
        if cfg.budget_minutes is not None and not cfg.budget_minutes > 0:
            raise SlmkitError(f"--budget-minutes {cfg.budget_minutes}: must be positive")
        if not cfg.max_drop >= 0:
            raise SlmkitError(f"--max-drop {cfg.max_drop}: must be ≥ 0 (points)")
        if cfg.gate_text is not None and not Path(cfg.gate_text).is_file():
            raise SlmkitError(f"--gate-text {cfg.gate_text}: file not found")
        self.model = resolve_model(cfg.model)
        self.specs, bad = parse_types(cfg.types)
        self.type_failures = list(bad)
        for line in bad:
            self.fail(line)
        if not self.specs:
            raise SlmkitError(f"--types {cfg.types!r}: no valid artifact type")
        names = [s.name for s in self.specs]
        self.reference = cfg.reference.lower() if cfg.reference else default_reference(self.specs)
        if self.reference not in names:
            raise SlmkitError(f"--reference {self.reference}: not among --types ({', '.join(names)})")
        self.suite = load_suite(cfg.suite)
        self.entries = select(self.suite, cfg.tasks)
        self.agent_names = [a.strip() for a in (cfg.agents or "").split(",") if a.strip()]
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = State.open(self.out, self.model)
        if cfg.report_only:  # read the state as it is (another process may be writing it)
            return
        self.state.data["config"] = {k: v for k, v in asdict(cfg).items() if k != "argv"}
        self.state.data["reference"] = self.reference
        self.state.start_session(cfg.argv)

    # ---- 1. exports ------------------------------------------------------------------------------------
    def exports(self) -> None:
        from slmkit.deploy.build import Builder, built

        builder = Builder(self.model, self.out / "artifacts", self.cfg.gate_text, self.cfg.threads, self.say,
                          self.cfg.bounds)
        try:
            for spec in self.specs:
                prev = self.state.step("artifacts", spec.name)
                path = spec.path(self.out / "artifacts", self.model)
                if prev and prev.get("status") == "ok" and (spec.kind == "torch" or built(spec, path)):
                    continue
                override = self.cfg.bounds.get(spec.file_key)
                if prev and prev.get("status") == "failed" and not self.cfg.retry_failed and \
                        prev.get("bounds_override") == override:
                    self.fail(f"{spec.name}: {prev.get('error')} (from an earlier run; --retry-failed tries again)")
                    continue
                result = builder.build(spec)
                result.update(kind=spec.kind, backend=spec.backend, qtype=spec.qtype, variant=spec.variant,
                              bounds_override=override)
                if result["status"] == "ok" and result.get("parity") is None and spec.kind == "torch":
                    result["gate_text"] = None
                self.state.record("artifacts", spec.name, value=result)
                if result["status"] != "ok":
                    self.fail(f"{spec.name}: {result['error']}")
                elif not result.get("reused"):
                    par = result.get("parity") or {}
                    if par:
                        self.say(f"{spec.name}: exported, {result['bytes'] / 1e6:.1f} MB, parity passed "
                                 f"(ppl ×{par.get('ppl_ratio', 1):.4f}, top-1 {par.get('top1_agreement', 1):.3f}) on "
                                 f"{(par.get('gate_text') or {}).get('label')}")
        finally:
            builder.release()

    def ok_specs(self) -> list[ArtifactSpec]:
        return [s for s in self.specs if (self.state.step("artifacts", s.name) or {}).get("status") == "ok"]

    # ---- 2. latency ------------------------------------------------------------------------------------
    def latency(self) -> None:
        if not self.cfg.latency:
            return
        from slmkit.bench.latency import bench_latency

        for spec in self.ok_specs():
            prev = self.state.step("latency", spec.name)
            if prev and prev.get("ok"):
                continue
            art = self.state.step("artifacts", spec.name)
            self.say(f"{spec.name}: latency bench ({self.cfg.prompt_tokens}-token prompt, {self.cfg.new_tokens} new)")
            try:
                report = bench_latency([art["path"]], backends=[spec.backend], prompt_tokens=self.cfg.prompt_tokens,
                                       new_tokens=self.cfg.new_tokens, repeats=self.cfg.repeats, threads=self.cfg.threads,
                                       out_dir=self.out / "latency" / safe(spec.name), parity=False, raw_llama="none",
                                       llama_options=spec.llama_options or None, progress=False,
                                       title=f"{self.model.name} {spec.name}")
                row = report["results"][0] if report["results"] else {"ok": False, "error": "no result"}
                row = {k: v for k, v in row.items() if k != "repeats"}
                row["machine"] = report["machine"]
            except SlmkitError as exc:
                row = {"ok": False, "error": str(exc)}
            self.state.record("latency", spec.name, value=row)
            if not row.get("ok"):
                self.fail(f"{spec.name}: latency bench failed: {row.get('error')}")

    # ---- 3. evaluation ---------------------------------------------------------------------------------
    def lm(self, spec: ArtifactSpec):
        """The artifact's lm-eval model, loaded once (llama.cpp variants placed as their name says)."""
        if spec.name not in self._lms:
            from slmkit.evaluate.runner import make_lm

            path = self.state.step("artifacts", spec.name)["path"]
            with self._placement(spec, path):
                if spec.variant == "norepack":
                    from slmkit.evaluate.lm import LlamaCppLM

                    self._lms[spec.name] = LlamaCppLM(path, batch_size=self.cfg.batch_size, n_threads=self.cfg.threads,
                                                      extra_bufts=False)
                else:
                    self._lms[spec.name] = make_lm(spec.backend, path, self.cfg.batch_size, self.cfg.threads)
        return self._lms[spec.name]

    @staticmethod
    def _placement(spec: ArtifactSpec, path: str):
        if spec.variant == "repack":
            from slmkit.bench.llama import repack_only

            return repack_only(str(path))
        return contextlib.nullcontext()

    def eval_one(self, spec: ArtifactSpec, entry, limit: int | None) -> dict:
        """Run (or reuse) one task on one artifact at `limit`; returns its state record."""
        from slmkit.deploy.docs import eval_docs
        from slmkit.evaluate.runner import run_eval
        from slmkit.paths import atomic_write_json as write

        prev = self.state.step("evals", spec.name, entry.name)
        run_dir = self.out / "eval" / safe(spec.name) / entry.task
        if prev and prev.get("status") == "done" and prev.get("limit") == limit and (run_dir / "per_doc.json").exists():
            return prev
        path = self.state.step("artifacts", spec.name)["path"]
        t0 = time.time()
        try:
            lm = self.lm(spec)  # loaded once per artifact; not part of this task's time
            t0 = time.time()
            rec = run_eval(path, suite=self.suite, tasks=[entry.name], backend=spec.backend, limit=limit, out=run_dir,
                           data=self.cfg.data, seed=self.cfg.seed, lm=lm, write_reports=False,
                           label=f"{self.model.name} {spec.name}")
            docs = eval_docs(run_dir)
            write(run_dir / "per_doc.json", docs)
            row = rec["scores"][0]
            lm_rec = rec.get("lm_eval") or {}
            sizes = _leaf_sizes(lm_rec, entry.task)
            result = {"status": "done", "limit": limit, "value": row["value"], "n": row["n"],
                      "metric": row["metric"], "fallback": row.get("fallback"), "seconds": round(time.time() - t0, 1),
                      "eval_seconds": rec.get("wall_seconds"), "leaf_sizes": sizes, "dir": str(run_dir),
                      "stats_problem": docs.get("problem")}
            if row["value"] is None:
                result.update(status="error", error=f"lm-eval reported no '{row['metric']}' value")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one task's failure is reported, the others go on
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            result = {"status": "error", "limit": limit, "error": f"{type(exc).__name__}: {first[:300]}",
                      "seconds": round(time.time() - t0, 1), "dir": str(run_dir)}
        self.state.record("evals", spec.name, entry.name, value=result)
        if result["status"] != "done":
            self.fail(f"{spec.name} × {entry.name}: {result['error']}")
        else:
            self.say(f"{spec.name} × {entry.name}: {result['value']:.2f} on {result['n']} documents "
                     f"({result['seconds']:.0f} s)")
        return result

    def evaluate(self, limits: dict[str, int | None], order: list | None = None) -> None:
        if not getattr(self, "_indexed", False):  # lm-eval's task index: once per process, not a task's cost
            from slmkit.evaluate.tasks import make_task_manager

            make_task_manager(self.cfg.data)
            self._indexed = True
        for entry in order or self.entries:
            for spec in self.ok_specs():
                self.eval_one(spec, entry, limits.get(entry.name))

    # ---- 4. agents -------------------------------------------------------------------------------------
    def agent_one(self, spec: ArtifactSpec, bench: str, limit: int | None) -> dict:
        from slmkit.deploy.docs import agent_docs
        from slmkit.paths import atomic_write_json as write

        prev = self.state.step("agents", spec.name, bench)
        run_dir = self.out / "agents" / safe(spec.name) / bench
        if prev and prev.get("status") == "done" and prev.get("limit") == limit and (run_dir / "per_doc.json").exists():
            return prev
        path = self.state.step("artifacts", spec.name)["path"]
        t0 = time.time()
        try:
            from slmkit.agents.runner import run_agent
        except ImportError as exc:
            result = {"status": "error", "limit": limit, "error": f"agents are not available in this install ({exc})"}
        else:
            try:
                self._release_lms()  # agents load their own runtime
                with self._placement(spec, path):
                    res = run_agent(bench, path, run_dir, backend=spec.backend, limit=limit, threads=self.cfg.threads,
                                    progress=False)
                docs = agent_docs(run_dir)
                write(run_dir / "per_doc.json", docs)
                metric = res.get("primary_metric")
                result = {"status": "done", "limit": limit, "value": (res.get("scores") or {}).get(metric),
                          "n": res.get("episodes"), "metric": metric, "mode": res.get("mode"),
                          "comparable": res.get("comparable"), "not_comparable_because": res.get("not_comparable_because"),
                          "seconds": round(time.time() - t0, 1), "dir": str(run_dir), "stats_problem": docs.get("problem")}
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                result = {"status": "error", "limit": limit, "error": f"{type(exc).__name__}: {first[:300]}",
                          "seconds": round(time.time() - t0, 1)}
        self.state.record("agents", spec.name, bench, value=result)
        if result["status"] != "done":
            self.fail(f"{spec.name} × agent {bench}: {result['error']}")
        else:
            self.say(f"{spec.name} × agent {bench}: {result['metric']} {result['value']} on {result['n']} episodes")
        return result

    def run_agents(self, limits: dict[str, int | None]) -> None:
        for bench in self.agent_names:
            for spec in self.ok_specs():
                self.agent_one(spec, bench, limits.get(bench))

    def _release_lms(self) -> None:
        import gc

        for lm in self._lms.values():
            close = getattr(getattr(lm, "runtime", None), "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
        self._lms.clear()
        gc.collect()

    # ---- 5. limits -------------------------------------------------------------------------------------
    def plan_limits(self) -> tuple[dict[str, int | None], dict[str, int | None]]:
        """(task limits, agent episode limits): --limit as given, or the budget plan (pilot first)."""
        cfg = self.cfg
        if cfg.budget_minutes is None:
            self.state.data["plan"] = {"mode": "limit", "limit": cfg.limit}
            return ({e.name: cfg.limit for e in self.entries}, {a: cfg.limit for a in self.agent_names})
        from slmkit.deploy import budget

        pilot = cfg.pilot_limit
        self.say(f"budget {cfg.budget_minutes:g} min: pilot at --limit {pilot} on every task and artifact")
        self.evaluate({e.name: pilot for e in self.entries})
        for bench in self.agent_names:
            for spec in self.ok_specs():
                self.agent_one(spec, bench, pilot)
        costs = []
        for e in self.entries:
            runs = [self.state.step("evals", s.name, e.name) for s in self.ok_specs()]
            runs = [r for r in runs if r and r.get("status") == "done" and r.get("limit") == pilot]
            if not runs:
                continue
            sizes = runs[0].get("leaf_sizes") or [pilot]
            docs = sum(min(pilot, n) for n in sizes)
            per_doc = sum((r.get("eval_seconds") or r["seconds"]) / max(docs, 1) for r in runs)
            overhead = sum(max(r["seconds"] - (r.get("eval_seconds") or r["seconds"]), 0.0) for r in runs)
            costs.append(budget.TaskCost(e.name, sizes, per_doc, overhead, pilot))
        agent_costs = []
        for bench in self.agent_names:
            runs = [self.state.step("agents", s.name, bench) for s in self.ok_specs()]
            runs = [r for r in runs if r and r.get("status") == "done"]
            if runs:
                available = _agent_tasks(bench)
                agent_costs.append(budget.TaskCost(bench, [available or pilot], sum(r["seconds"] / max(r["n"] or 1, 1)
                                                                                   for r in runs), 0.0, pilot))
        spent = self.state.spent_seconds()
        reserve = 60.0 + 5.0 * len(self.specs)  # statistics and the report
        left = cfg.budget_minutes * 60 - spent - reserve
        limits = budget.allocate(costs + agent_costs, max(left, 0.0), floor_docs=cfg.min_ci_docs)
        plan = {"mode": "budget", "budget_minutes": cfg.budget_minutes, "pilot_limit": pilot,
                "spent_before_plan_s": round(spent, 1), "left_for_plan_s": round(left, 1),
                "costs": [asdict(c) for c in costs + agent_costs], "limits": limits,
                "precision": budget.precision(costs, limits),
                "agent_precision": budget.precision(agent_costs, limits) if agent_costs else None}
        self.state.data["plan"] = plan
        self.state.save()
        p = plan["precision"]
        self.say(f"plan: limits {', '.join(f'{k} {v}' for k, v in limits.items())}; ~{p['planned_seconds'] / 60:.0f} "
                 f"min more; worst-case 95% half-width of the average ±{p['average_half_width']} points")
        return ({e.name: limits.get(e.name, pilot) for e in self.entries},
                {a: limits.get(a, pilot) for a in self.agent_names})

    # ---- all -------------------------------------------------------------------------------------------
    def run(self) -> dict:
        self.setup()
        if self.cfg.report_only:  # the report of what the state file holds (e.g. of a run still going)
            self.say("report only: nothing is exported, timed or evaluated")
            return self.report()
        try:
            self.exports()
            self.latency()
            task_limits, agent_limits = self.plan_limits()
            plan = self.state.data.get("plan") or {}
            order = self.entries
            if plan.get("mode") == "budget":  # cheapest first: a run cut short still has whole tasks
                cost = {c["name"]: c["per_doc_s"] for c in plan.get("costs", [])}
                order = sorted(self.entries, key=lambda e: cost.get(e.name, 0.0))
            self.evaluate(task_limits, order)
            self._release_lms()
            self.run_agents(agent_limits)
        finally:
            self._release_lms()
            self.state.tick()
            self.state.save()
        return self.report()

    def report(self) -> dict:
        from slmkit.deploy.report import build_report, write_report

        report = build_report(self.state, self.specs, self.entries, self.agent_names, self.reference, self.cfg,
                              self.type_failures)
        report["files"] = write_report(report, self.out)
        return report


def _leaf_sizes(lm_rec: dict, task: str) -> list[int]:
    """Documents available in each leaf of `task` (lm-eval's n-samples 'original')."""
    children = {g: list(c) for g, c in (lm_rec.get("group_subtasks") or {}).items() if c}
    n = lm_rec.get("n-samples") or {}

    def leaves(node):
        return [x for c in children[node] for x in leaves(c)] if node in children else [node]

    return [int((n.get(leaf) or {}).get("original") or (n.get(leaf) or {}).get("effective") or 0) for leaf in leaves(task)]


def _agent_tasks(bench: str) -> int | None:
    try:
        from slmkit.agents.registry import load_environment

        env, _ = load_environment(bench)
        try:
            return len(env.tasks())
        finally:
            close = getattr(env, "close", None)
            if callable(close):
                close()
    except Exception:  # noqa: BLE001 - only a planning hint
        return None


def _console_say():
    from rich.console import Console

    console = Console(stderr=True)
    return lambda msg: console.log(f"deploy: {msg}", markup=False, highlight=False)


def run_deploy(cfg: DeployConfig, say: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) a deploy; returns the report (also written as OUT/report.md/.html/.json + pareto.png)."""
    return Deploy(cfg, say).run()
