"""`slmkit deploy` end to end on a tiny random model: failures named and shown, numbers that match lm-eval's
own results, a PNG that decodes, and a SIGKILLed run that resumes without redoing finished work."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_tokenizer_dir):
    from slmkit.model.config import ModelConfig
    from slmkit.model.hf import export_hf
    from slmkit.model.tokenizer import load_tokenizer
    from slmkit.model.transformer import Transformer

    tok = load_tokenizer(tiny_tokenizer_dir)
    # a 4k window: few-shot prompts in this tiny tokenizer run to ~2.5k tokens, and scoring refuses what does not fit
    cfg = ModelConfig.from_preset("nano", vocab_size=512, max_seq_len=4096, eos_token_id=tok.eos_token_id,
                                  bos_token_id=tok.eos_token_id)
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("deploy") / "model"
    export_hf(Transformer(cfg).eval(), out, tiny_tokenizer_dir)
    return out


def deploy_main(argv: list[str]) -> int:
    """`slmkit deploy ...` through the stage's own add_commands (as slmkit.cli registers it)."""
    from slmkit.deploy.cli import add_commands
    from slmkit.errors import SlmkitError

    parser = argparse.ArgumentParser(prog="slmkit")
    add_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SlmkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def test_deploy_names_each_failure_and_still_reports(tiny_model, tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    code = deploy_main(["deploy", str(tiny_model), "--types", "torch,f32,q4_k_m,bogus", "--tasks", "arc_easy,no_such_task",
                        "--limit", "3", "--out", str(out), "--prompt-tokens", "16", "--new-tokens", "4", "--repeats", "1",
                        "--bootstrap", "500", "--min-ci-docs", "1"])
    printed = capsys.readouterr().out
    assert code == 1  # report written, with failures
    parity = json.loads((out / "artifacts" / "model-q4_k_m.gguf.parity.json").read_text())
    assert parity["passed"] is False, "precondition: q4_k_m of random weights fails its gate"
    lines = printed.splitlines()
    assert any(line.startswith("failed: --types 'bogus': unknown type") for line in lines)
    assert any(line.startswith("failed: q4_k_m:") and "parity gate failed on the built-in generic text" in line
               for line in lines)
    assert any(line.startswith("failed: torch × no_such_task:") and "unknown lm-eval task" in line for line in lines)
    assert any(line.startswith("failed: f32 × no_such_task:") for line in lines)
    assert printed.count("failed:") == 4

    report = json.loads((out / "report.json").read_text())
    # scores are lm-eval's own (its results.json per artifact), with a CI around them
    for name in ("torch", "f32"):
        run = json.loads((out / "eval" / name / "arc_easy" / "results.json").read_text())
        cell = report["tasks"]["ARC-Easy"]["cells"][name]
        assert cell["score"] == pytest.approx(100 * run["lm_eval"]["results"]["arc_easy"]["acc_norm,none"], abs=1e-3)
        assert cell["ci"][0] <= cell["score"] <= cell["ci"][1] and run["scores"][0]["n"] == 3
    assert report["reference"] == "f32"
    torch_cell, f32_cell = (report["tasks"]["ARC-Easy"]["cells"][n] for n in ("torch", "f32"))
    assert torch_cell["diff"] == pytest.approx(torch_cell["score"] - f32_cell["score"], abs=1e-3)
    assert torch_cell["diff_ci"][0] <= torch_cell["diff"] <= torch_cell["diff_ci"][1] and "diff" not in f32_cell
    assert report["tasks"]["no_such_task"]["cells"]["torch"]["status"] == "failed"
    assert report["tasks"]["no_such_task"]["cells"]["q4_k_m"]["status"] == "failed"
    assert report["average"]["torch"]["tasks"] == ["ARC-Easy"]
    assert report["pick"]["name"] in ("torch", "f32")
    menu = {r["name"]: r for r in report["menu"]}
    assert menu["q4_k_m"]["status"] == "failed" and menu["torch"]["latency"]["decode_tok_s"] > 0

    md = (out / "report.md").read_text()
    q4_row = next(line for line in md.splitlines() if line.startswith("| q4_k_m |"))
    assert "FAILED: parity gate failed" in q4_row
    task_row = next(line for line in md.splitlines() if line.startswith("| no_such_task |"))
    assert "FAILED" in task_row and "0.00" not in task_row  # a failure is never a 0.0 score
    assert "## Failures" in md and "bogus" in md
    html = (out / "report.html").read_text()
    assert "<table>" in html and "FAILED: parity gate failed" in html

    import matplotlib.image

    img = matplotlib.image.imread(out / "pareto.png")
    assert img.shape[0] > 300 and img.shape[1] > 500


def test_a_killed_deploy_resumes_without_redoing_finished_work(tiny_model, tmp_path, data_dir, monkeypatch):
    out = tmp_path / "run"
    argv = ["deploy", str(tiny_model), "--types", "torch,f32", "--tasks", "arc_easy,piqa,winogrande", "--limit", "2",
            "--out", str(out), "--no-latency", "--bootstrap", "200", "--min-ci-docs", "1"]
    script = ("import argparse, sys\nfrom slmkit.deploy.cli import add_commands\n"
              "p = argparse.ArgumentParser(prog='slmkit'); add_commands(p.add_subparsers())\n"
              "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = out / "state.json"
    done_before: set[tuple[str, str]] = set()
    deadline = time.time() + 900
    try:
        while time.time() < deadline and proc.poll() is None:
            if state_path.exists():
                try:
                    state = json.loads(state_path.read_text())
                except ValueError:  # never happens with atomic writes; would fail below if it did
                    raise AssertionError("state.json was read half-written")
                done_before = {(a, t) for a, tasks in state.get("evals", {}).items() for t, r in tasks.items()
                               if r.get("status") == "done"}
                if done_before:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished or failed before it could be killed"
    assert done_before and len(done_before) < 6
    gguf = out / "artifacts" / "model-f32.gguf"
    mtime = gguf.stat().st_mtime_ns
    done_dirs = {pair: (out / "eval" / pair[0] / {"ARC-Easy": "arc_easy", "PIQA": "piqa", "WinoGrande": "winogrande"}[pair[1]]
                        / "results.json").stat().st_mtime_ns for pair in done_before}

    import slmkit.evaluate.runner as runner
    import slmkit.export.gguf as gguf_mod

    calls: list[tuple[str, str]] = []
    real_run_eval = runner.run_eval

    def spy(model, **kw):
        calls.append((kw["label"].split()[-1], kw["tasks"][0]))
        return real_run_eval(model, **kw)

    def no_export(*a, **k):
        raise AssertionError("a finished export was redone")

    monkeypatch.setattr(runner, "run_eval", spy)
    monkeypatch.setattr(gguf_mod, "export_gguf", no_export)
    # the report of the partial run, running nothing: finished cells scored, the rest "not run"
    assert deploy_main(argv + ["--report-only"]) == 0 and calls == []
    partial = json.loads((out / "report.json").read_text())
    for name in ("torch", "f32"):
        for task in ("ARC-Easy", "PIQA", "WinoGrande"):
            cell = partial["tasks"][task]["cells"][name]
            assert cell["status"] == ("ok" if (name, task) in done_before else "not run")
    assert deploy_main(argv) == 0
    every = {(a, t) for a in ("torch", "f32") for t in ("ARC-Easy", "PIQA", "WinoGrande")}
    assert set(calls) == every - done_before and len(calls) == len(set(calls))
    assert gguf.stat().st_mtime_ns == mtime
    for pair, stamp in done_dirs.items():
        assert stamp == (out / "eval" / pair[0] / {"ARC-Easy": "arc_easy", "PIQA": "piqa", "WinoGrande": "winogrande"}[pair[1]]
                         / "results.json").stat().st_mtime_ns
    state = json.loads((out / "state.json").read_text())
    assert all(r["status"] == "done" for tasks in state["evals"].values() for r in tasks.values())
    assert len(state["sessions"]) == 2
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["average"]["f32"]["tasks"]) == ["ARC-Easy", "PIQA", "WinoGrande"]


def test_bad_arguments_are_one_line_errors(tiny_model, tmp_path, capsys):
    assert deploy_main(["deploy", str(tiny_model), "--types", "nope,zzz", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "error: --types 'nope,zzz': no valid artifact type" in err
    assert deploy_main(["deploy", str(tiny_model), "--limit", "2", "--budget-minutes", "5", "--out", str(tmp_path / "b")]) == 2
    assert "give --limit or --budget-minutes, not both" in capsys.readouterr().err
    assert deploy_main(["deploy", str(tiny_model), "--types", "torch", "--reference", "q8_0", "--out", str(tmp_path / "c")]) == 2
    assert "--reference q8_0: not among --types" in capsys.readouterr().err


def test_type_bounds_parse_to_exporter_bounds():
    from slmkit.deploy.cli import parse_type_bounds
    from slmkit.errors import SlmkitError

    assert parse_type_bounds(["q4_0:min_top1=0.7", "q4_0:max_ppl_ratio=none", "onnx-int8:max_mean_kl=0.2"]) == {
        "q4_0": {"min_top1": 0.7, "max_ppl_ratio": None}, "onnx-int8": {"max_mean_kl": 0.2}}
    with pytest.raises(SlmkitError, match="expected TYPE:KEY=VALUE"):
        parse_type_bounds(["min_top1=0.7"])
    with pytest.raises(SlmkitError, match="KEY one of"):
        parse_type_bounds(["q4_0:top=0.7"])


def test_budget_mode_pilots_plans_and_states_its_precision(tiny_model, tmp_path, data_dir, capsys):
    from slmkit.deploy import budget

    out = tmp_path / "run"
    assert deploy_main(["deploy", str(tiny_model), "--types", "torch", "--tasks", "arc_easy,piqa", "--budget-minutes", "4",
                        "--no-latency", "--out", str(out), "--bootstrap", "200"]) == 0
    state = json.loads((out / "state.json").read_text())
    plan = state["plan"]
    assert plan["mode"] == "budget" and plan["pilot_limit"] == 1
    assert {c["name"] for c in plan["costs"]} == {"ARC-Easy", "PIQA"}
    assert all(c["leaf_sizes"] == [{"ARC-Easy": 2376, "PIQA": 1838}[c["name"]]] for c in plan["costs"])
    assert plan["precision"]["planned_seconds"] <= max(plan["left_for_plan_s"], 0) + 1e-6
    for task, row in plan["precision"]["tasks"].items():
        assert row["limit"] == plan["limits"][task] >= 1
        assert row["half_width"] == pytest.approx(budget.half_width(row["documents"]), abs=0.01)
        assert state["evals"]["torch"][task]["limit"] == row["limit"]  # the run used the planned limits
    md = (out / "report.md").read_text()
    assert "## Budget: 4 min" in md and "worst-case ±95%" in md
