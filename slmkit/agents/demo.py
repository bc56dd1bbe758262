"""`slmkit demo` agent stage: a few HotpotQA ReAct episodes (offline corpus), reported like the other stages.

Model: SmolLM2-135M-Instruct when it is already pulled (`slmkit models pull smollm2-135m-instruct`; the demo
never downloads it), else the demo's own exported model (ctx["hf_dir"]) — a tiny arithmetic model whose
context is shorter than ReAct's few-shot prompt, so its episodes end as 'context full' and score 0: the
stage then shows the machinery, not an agent.
"""

from __future__ import annotations

from pathlib import Path

from slmkit.errors import Unavailable


class AgentDemoSkipped(Unavailable):
    """The stage cannot run here (no SLMKIT_DATA with react/ and hotpotqa/)."""


def _pulled_smollm2() -> Path | None:
    from slmkit.hub import list_models

    for row in list_models():
        if row["name"] == "smollm2-135m-instruct" and row["hf_dir"]:
            return Path(row["path"]) / "hf"
    return None


def demo_agent(ctx: dict) -> dict:
    import os

    from slmkit.agents.react import Sampling
    from slmkit.agents.runner import run_agent

    data = os.environ.get("SLMKIT_DATA")
    if not data or not (Path(data) / "react").is_dir() or not (Path(data) / "hotpotqa").is_dir():
        raise AgentDemoSkipped("no ReAct prompts / HotpotQA data: set SLMKIT_DATA to a folder with react/ and hotpotqa/")
    quick = bool(ctx.get("quick"))
    smol = _pulled_smollm2()
    model = smol or Path(ctx["hf_dir"])
    episodes = 1 if quick else 3
    sampling = Sampling(max_new_tokens=48 if quick else 100)
    out = Path(ctx["run_dir"]) / "agent"
    res = run_agent("hotpotqa", model, out, backend="torch", limit=episodes, sampling=sampling,
                    parallel=episodes, threads=1, progress=False)
    s = res["stats"]
    return {"model": "SmolLM2-135M-Instruct (pulled)" if smol else "demo model", "benchmark": "hotpotqa",
            "mode": res["mode"], "comparable": res["comparable"], "episodes": res["episodes"],
            "em": res["scores"].get("em"), "f1": res["scores"].get("f1"), "mean_steps": s["mean_steps"],
            "invalid_action_rate": s["invalid_action_rate"], "episode_ends": s["episode_ends"],
            "steps_per_second": res["timing"]["steps_per_second"], "report": str(out / "report.md")}
