"""The demo's agent stage on a small real checkpoint: it runs HotpotQA episodes and reports the numbers."""

from __future__ import annotations

import json

import pytest

from agentkit import tiny_runtime
from slmkit.agents import demo


def test_demo_agent_stage_reports_a_run(tiny_tokenizer_dir, tmp_path, monkeypatch, data_dir, one_thread):
    from slmkit.model.checkpoint import save_checkpoint

    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "_pulled_smollm2", lambda: None)
    _, model = tiny_runtime(tiny_tokenizer_dir)
    save_checkpoint(tmp_path / "hf", model, tiny_tokenizer_dir)
    out = demo.demo_agent({"hf_dir": tmp_path / "hf", "run_dir": tmp_path / "run", "quick": True})
    assert out["model"] == "demo model" and out["episodes"] == 1 and out["mode"] == "offline-distractor"
    assert out["em"] == 0.0 and out["mean_steps"] == 7  # a random model never finishes on its own
    saved = json.loads((tmp_path / "run" / "agent" / "results.json").read_text())
    assert saved["scores"]["em"] == out["em"] and (tmp_path / "run" / "agent" / "report.md").exists()


def test_demo_agent_skips_without_data(monkeypatch, tmp_path):
    monkeypatch.delenv("SLMKIT_DATA", raising=False)
    with pytest.raises(demo.AgentDemoSkipped, match="SLMKIT_DATA"):
        demo.demo_agent({"hf_dir": tmp_path, "run_dir": tmp_path, "quick": True})
