"""`slmkit agent run/show` through slmkit.agents.cli on a real (tiny, random) checkpoint: files, resume after
a kill equals one uninterrupted run, one-line errors, the environment registry."""

from __future__ import annotations

import argparse
import json

import pytest

from agentkit import results_without_timing, saved_episodes, tiny_checkpoint
from slmkit.agents import cli as agent_cli
from slmkit.agents import registry
from slmkit.agents.react import Sampling
from slmkit.agents.runner import run_agent
from slmkit.errors import SlmkitError


def _parser():
    parser = argparse.ArgumentParser(prog="slmkit")
    agent_cli.add_commands(parser.add_subparsers(dest="command"))
    return parser


def _main(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer_dir, tmp_path_factory):
    return tiny_checkpoint(tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny") / "ck")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))


_strip = results_without_timing
_episodes = saved_episodes


def test_run_writes_files_and_resume_after_kill_matches_one_run(tiny_model, tmp_path, capsys, one_thread):
    whole = tmp_path / "whole"
    assert _main(["agent", "run", "fever", str(tiny_model), "--limit", "3", "--out", str(whole), "--max-new-tokens", "12",
                  "--no-progress"]) == 0
    assert "fever (closed-book): 3 episodes" in capsys.readouterr().out
    res = json.loads((whole / "results.json").read_text())
    assert res["mode"] == "closed-book" and res["comparable"] is False and "closed-book" in res["not_comparable_because"]
    assert res["episodes"] == 3 and set(res["scores"]) == {"em"} and res["stats"]["steps"] > 0
    assert any(r["model"] == "Xmodel-2-1.2B" and r["fever"] == 40.0 for r in res["published"])
    md = (whole / "report.md").read_text()
    assert "Not comparable" in md and "Xmodel-2-1.2B | 40.00" in md
    assert "(torch, closed-book)" in md  # the backend detected from the artifact, not "auto"
    assert (whole / "report.html").read_text().startswith("<!doctype html>") and (whole / "scores.png").stat().st_size > 1000

    killed = tmp_path / "killed"

    class Kill(Exception):
        pass

    def kill_after_two(record, seen=[]):
        seen.append(record["task_id"])
        if len(seen) == 2:
            raise Kill

    with pytest.raises(Kill):
        run_agent("fever", tiny_model, killed, limit=3, sampling=Sampling(max_new_tokens=12), progress=False,
                  on_episode=kill_after_two)
    assert not (killed / "results.json").exists()
    with open(killed / "trajectories.jsonl", "a") as f:
        f.write('{"task_id": "fever-dev-99", "torn')  # a write cut off by the kill
    again = run_agent("fever", tiny_model, killed, limit=3, sampling=Sampling(max_new_tokens=12), progress=False)
    sessions = again["timing"]["sessions"]
    assert [x["episodes"] for x in sessions] == [2, 1]  # only the unfinished episode ran; the killed session's time counts
    assert again["timing"]["wall_seconds"] == pytest.approx(sum(x["seconds"] for x in sessions), abs=0.02)
    assert sessions[0]["seconds"] > 0
    assert _strip(again)["scores"] == _strip(res)["scores"] and _strip(again)["stats"] == _strip(res)["stats"]
    assert _episodes(killed) == _episodes(whole)
    # a finished run reruns without a model call; a different config is refused
    assert run_agent("fever", tiny_model, killed, limit=3, sampling=Sampling(max_new_tokens=12), progress=False)["episodes"] == 3
    with pytest.raises(SlmkitError, match="different run"):
        run_agent("fever", tiny_model, killed, limit=3, sampling=Sampling(max_new_tokens=13), progress=False)

    assert _main(["agent", "show", str(whole)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("fever-dev-") == 3
    assert _main(["agent", "show", str(whole), "--episode", "1"]) == 0
    shown = capsys.readouterr().out
    assert "Claim: " in shown and "Thought 1:" in shown and "--- steps" in shown
    with pytest.raises(SlmkitError, match="no episode"):
        _main(["agent", "show", str(whole), "--episode", "9"])


@pytest.mark.parametrize("argv,message", [
    (["--limit", "0"], "--limit 0: must be at least 1"),
    (["--limit", "ten"], "must be a whole number"),
    (["--limit", "99999"], "has only 7405 tasks"),
    (["--corpus", "/nonexistent/corpus"], "corpus not found"),
])
def test_bad_options_are_one_line_errors(tiny_model, tmp_path, argv, message):
    with pytest.raises(SlmkitError, match=message) as exc:
        _main(["agent", "run", "fever", str(tiny_model), "--out", str(tmp_path / "r"), *argv])
    assert "\n" not in str(exc.value)


def test_missing_model_and_unknown_or_missing_environment(tmp_path, monkeypatch):
    with pytest.raises(SlmkitError, match="model not found"):
        _main(["agent", "run", "hotpotqa", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    with pytest.raises(SlmkitError, match="unknown agent environment 'chess'"):
        registry.load_environment("chess")
    monkeypatch.setitem(registry.ENVIRONMENTS, "alfworld", "slmkit.agents.not_built_yet:load_environment")
    with pytest.raises(SlmkitError, match="'alfworld' is not available in this install"):
        registry.load_environment("alfworld")
    assert registry.ENVIRONMENTS["webshop"] == "slmkit.agents.webshop:load_environment"


def test_hotpotqa_local_corpus_mode(tmp_path, tiny_model, one_thread):
    corpus = tmp_path / "pages.jsonl"
    corpus.write_text(json.dumps({"title": "Scott Derrickson", "sentences": ["Scott Derrickson is a director."]}) + "\n")
    res = run_agent("hotpotqa", tiny_model, tmp_path / "run", limit=1, options={"corpus": str(corpus)},
                    sampling=Sampling(max_new_tokens=8), progress=False)
    assert res["mode"] == "local-corpus" and res["episodes"] == 1
    ep = _episodes(tmp_path / "run")[0]
    assert ep["task_id"] == "hotpotqa-dev-3687"  # ReAct's first sampled dev index (random.Random(233))


def test_fever_sample_order_is_reacts(data_dir):
    from slmkit.agents.fever import load_environment

    env, _ = load_environment()
    first = env.tasks(1)[0]
    # ReAct's FEVER.ipynb output starts with: "3687 Claim: Paramore is not from Tennessee."
    assert first.id == "fever-dev-3687" and first.data["claim"] == "Paramore is not from Tennessee."
