"""The ReAct loop with scripted model outputs: oracle and null policies through the same env + scorer
(HotpotQA all 198 offline questions, FEVER closed-book), 20+ malformed outputs that never crash a run,
ReAct's protocol details, and the token-id trajectory rule (text and ids agree, stops inside a token)."""

from __future__ import annotations

import random

import pytest

from agentkit import ScriptedLLM
from slmkit.agents.base import Environment, ReactFormat, StepResult, Task
from slmkit.agents.react import Sampling, run_episodes
from slmkit.agents.trajectory import Trajectory


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    from slmkit.model.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def hotpot(data_dir, tmp_path_factory):
    import os

    os.environ["SLMKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    from slmkit.agents.hotpotqa import load_environment

    return load_environment()


def _text_ids_agree(record, tok) -> bool:
    ids = [i for p in record["pieces"] for i in p["ids"]]
    return tok.decode(ids) == "".join(p["text"] for p in record["pieces"])


def test_oracle_scores_100_and_null_0_on_all_198_hotpotqa(hotpot, tok):
    env, fmt = hotpot
    tasks = env.tasks()
    data = {t.id: t.data for t in tasks}

    def oracle(key, step, followup, prompt):
        titles, answer = data[key]["supporting_titles"], data[key]["answer"]
        if step <= len(titles):  # keeps writing past the stop, as a model would
            return f" I need to search {titles[step - 1]}.\nAction {step}: Search[{titles[step - 1]}]\nObservation {step}: (imagined)"
        return f" So the answer is {answer}.\nAction {step}: Finish[{answer}]\nObservation {step}:"

    llm = ScriptedLLM(tok, oracle)
    roomy = Sampling(max_new_tokens=400)  # the test BPE spends several ids per character of a long answer
    records = run_episodes(env, fmt, tasks, llm, roomy, parallel=16)
    assert len(records) == 198 and not any(r.get("error") for r in records)
    assert sum(r["metrics"]["em"] for r in records) == 198 and sum(r["metrics"]["f1"] for r in records) == 198
    assert all(r["stats"]["invalid_actions"] == 0 and r["info"]["searches"] == len(data[r["task_id"]]["supporting_titles"])
               for r in records)
    assert max(llm.batches) == 16 and sorted(llm.released) == sorted(data)
    # the page the search opened is what the trajectory shows
    first = records[0]
    assert not first["steps"][0]["observation"].startswith("Could not find")
    assert _text_ids_agree(first, tok)

    null = run_episodes(env, fmt, tasks, ScriptedLLM(tok, lambda k, s, f, p: f" I do not know.\nAction {s}: Finish[]\n"), parallel=16)
    assert sum(r["metrics"]["em"] for r in null) == 0 and sum(r["metrics"]["f1"] for r in null) == 0


def test_fever_closed_book_oracle_and_null(data_dir, tok):
    from slmkit.agents.fever import LABELS, load_environment

    env, fmt = load_environment()
    assert env.mode == "closed-book" and not env.comparable
    tasks = env.tasks(300)
    gold = {t.id: t.data["answer"] for t in tasks}
    assert set(gold.values()) == set(LABELS)
    oracle = ScriptedLLM(tok, lambda k, s, f, p: f" Answer.\nAction {s}: Finish[{gold[k].lower()}]\nObservation {s}:")
    recs = run_episodes(env, fmt, tasks, oracle, parallel=8)
    assert sum(r["metrics"]["em"] for r in recs) == 300 and all(r["n_steps"] == 1 for r in recs)
    wrong = {"SUPPORTS": "REFUTES", "REFUTES": "NOT ENOUGH INFO", "NOT ENOUGH INFO": "SUPPORTS"}
    null = ScriptedLLM(tok, lambda k, s, f, p: f" Answer.\nAction {s}: Finish[{wrong[gold[k]]}]\n")
    assert sum(r["metrics"]["em"] for r in run_episodes(env, fmt, tasks, null, parallel=8)) == 0
    # the closed-book prompt has no search example, and search is refused
    assert "Search[" not in fmt.prefix and "Action 1: Finish[SUPPORTS]" in fmt.prefix
    srch = ScriptedLLM(tok, lambda k, s, f, p: f" x\nAction {s}: Search[Paramore]\n")
    rec = run_episodes(env, fmt, tasks[:1], srch)[0]
    assert rec["steps"][0]["observation"] == "Invalid action: search[Paramore]"
    assert rec["steps"][0]["malformed"] == "tool 'search' unavailable"


def test_react_protocol_prompt_pieces_and_forced_finish(hotpot, tok):
    env, fmt = hotpot
    task = env.tasks(1)[0]
    seen = []

    def think_forever(key, step, followup, prompt):
        seen.append((step, followup, prompt))
        return f" hmm\nAction {step}: Think[more]\nObservation {step}:"

    rec = run_episodes(env, fmt, [task], ScriptedLLM(tok, think_forever))[0]
    assert [s["i"] for s in rec["steps"]] == [1, 2, 3, 4, 5, 6, 7, 7] and rec["steps"][-1]["forced"]
    assert rec["steps"][-1]["action"] == "finish[]" and rec["metrics"] == {"em": 0.0, "f1": 0.0}
    assert rec["end"] == "step budget spent"
    step1 = seen[0][2]
    assert step1.startswith("Solve a question answering task with interleaving Thought, Action, Observation steps.")
    assert step1.endswith(f"Question: {task.data['question']}\nThought 1:")
    assert seen[1][2].endswith("Thought 1: hmm\nAction 1: Think[more]\nObservation 1: Nice thought.\nThought 2:")
    assert len(seen) == 7  # the forced finish calls no model


# scripted outputs: (name, outputs of the successive calls, expected invalid actions in step 1 or None = no check)
NON_UTF8 = "non-utf8 bytes"
MALFORMED = [
    ("empty", ["", ""], 1),
    ("whitespace only", ["   \n\n  ", "  "], 1),
    ("no action line, fallback finds one", [" I will look this up.", " Search[Lord Byron]"], 0),
    ("no action line, fallback garbage", [" I will look this up.", " I really will"], 1),
    ("unknown tool", [" t\nAction 1: Dance[Byron]"], 1),
    ("unbalanced brackets", [" t\nAction 1: Search[Byron"], 1),
    ("closing bracket only", [" t\nAction 1: Search Byron]"], 1),
    ("nested brackets accepted by wikienv", [" t\nAction 1: Finish[a]]"], 0),
    ("bracketed tool name", [" t\nAction 1: [Search]"], 1),
    ("endless text", [" " + "very " * 400], 1),
    ("endless action", [" t\nAction 1: Search[" + "x" * 900], 1),
    ("non-ASCII thought and action", [" 思考する\nAction 1: Search[東京タワー]"], 0),
    ("non-ASCII tool name", [" t\nAction 1: Ärger[x]"], 1),
    ("control characters", [" a\x00b\nAction 1: Search[\x07\x08]"], 1),
    (NON_UTF8, None, 1),
    ("two action lines", [" t\nAction 1: Search[A]\nAction 1: Search[B]", " Search[A]"], 0),
    ("missing newline before Action", [" t Action 1: Finish[x]", " Finish[x]"], 0),
    ("wrong step number", [" t\nAction 2: Search[A]", " lookup[A]"], 0),
    ("empty entity", [" t\nAction 1: Search[]"], 0),
    ("lookup with no page", [" t\nAction 1: Lookup[x]"], 0),
    ("model writes the observation itself", [" t\nObservation 1: fake", " Finish[x]"], 0),
    ("empty thought", ["\nAction 1: Search[A]", " Search[A]"], 0),
    ("fallback runs past its newline stop", [" t", " Search[A]\nThought 2: more\nAction 2: x"], 0),
    ("special token text", [" t<|im_end|>\nAction 1: Finish[<|im_end|>x]"], 0),
    ("lower-case tool", [" t\nAction 1: search[Lord Byron]"], 0),
    ("all caps tool", [" t\nAction 1: SEARCH[Lord Byron]"], 1),
]


@pytest.mark.parametrize("name,outputs,invalid", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_outputs_never_crash(hotpot, tok, name, outputs, invalid):
    env, fmt = hotpot
    task = env.tasks(1)[0]
    if name == NON_UTF8:
        eacute = tok.encode("é", add_special_tokens=False)
        assert len(eacute) == 2  # byte-level: one id per UTF-8 byte here
        outputs = [tok.encode(" t\nAction 1: Search[", add_special_tokens=False) + eacute[:1] * 3
                   + tok.encode("]", add_special_tokens=False)]
    calls = {"n": 0}

    def policy(key, step, followup, prompt):
        calls["n"] += 1
        if step == 1 and calls["n"] <= len(outputs):
            return outputs[calls["n"] - 1]
        return f" done\nAction {step}: Finish[x]\nObservation {step}:"

    rec = run_episodes(env, fmt, [task], ScriptedLLM(tok, policy), Sampling(max_new_tokens=100))[0]
    assert "error" not in rec, rec.get("traceback")
    assert rec["metrics"].keys() == {"em", "f1"}
    first = rec["steps"][0]
    if invalid is not None:
        assert int(first["invalid"]) == invalid, first
        if invalid:
            assert first["observation"].startswith("Invalid action") and first["malformed"]
    assert _text_ids_agree(rec, tok)
    assert rec["stats"]["invalid_actions"] >= (invalid or 0)
    if name.startswith("endless"):
        assert rec["stats"]["length_stops"] >= 1
    if name == NON_UTF8:
        assert rec["stats"]["odd_text"] == 1 and first["action"] is None and "\ufffd" in first["output"]


class _BrokenSourceEnv(Environment):
    """An environment that fails on some calls: its errors are recorded and the run goes on."""

    name, mode = "broken", "test"

    def __init__(self, fail_reset: set[str]):
        self.fail_reset = fail_reset

    def tasks(self, limit=None):
        return [Task(str(i)) for i in range(4)]

    def reset(self, task):
        if task.id in self.fail_reset:
            raise RuntimeError("game file failed to load")
        return "start"

    def step(self, action):
        if action == "explode":
            raise ValueError("boom")
        return StepResult("ok", done=action == "stop")

    def score(self, task, history):
        return {"success": float(bool(history and history[-1].done))}


class _LineFormat(ReactFormat):
    max_steps = 3

    def prompt(self, task, first):
        return f"Task {task.id}: {first}\n>"

    def turn(self, i):
        return ""

    def stops(self, i):
        return ("\n",)

    def parse(self, i, output):
        from slmkit.agents.base import Move

        action = output.strip()
        return Move(action=action or None, text=f" {action}", malformed=None if action else "empty")

    def observation(self, i, obs):
        return f"\n{obs}\n>"


def test_environment_errors_are_recorded_per_episode(tok):
    env = _BrokenSourceEnv({"1"})
    script = {"0": ["explode", "stop"], "2": ["", "stop"], "3": ["go", "go", "go"]}
    pos = {k: 0 for k in script}

    def policy(key, step, followup, prompt):
        out = script[key][pos[key]]
        pos[key] += 1
        return f" {out}\n"

    recs = run_episodes(env, _LineFormat(), env.tasks(), ScriptedLLM(tok, policy), parallel=4)
    assert "game file failed to load" in recs[1]["error"] and recs[1]["steps"] == []
    assert recs[0]["stats"]["env_errors"] == 1 and recs[0]["metrics"] == {"success": 1.0}
    assert recs[2]["steps"][0]["observation"] == "Invalid action: empty" and recs[2]["metrics"] == {"success": 1.0}
    assert recs[3]["n_steps"] == 3 and recs[3]["metrics"] == {"success": 0.0} and recs[3]["end"] is None
    assert all(_text_ids_agree(r, tok) for r in (recs[0], recs[2], recs[3]))


def test_context_full_ends_the_episode_with_the_forced_finish(hotpot, tok):
    env, fmt = hotpot
    task = env.tasks(1)[0]
    plen = len(tok.encode(fmt.prompt(task, env.reset(task)) + "Thought 1:", add_special_tokens=False))
    llm = ScriptedLLM(tok, lambda k, s, f, p: f" t\nAction {s}: Search[Scott Derrickson]\nObservation {s}:", context_limit=plen + 60)
    rec = run_episodes(env, fmt, [task], llm)[0]
    assert rec["end"] == "context full" and rec["steps"][-1]["forced"] and "error" not in rec


def _cases(tok, n=300, seed=0):
    rng = random.Random(seed)
    words = ["Thought", " 1", ":", ".", "\n", "Observation", " ", "é", "東京", "ab", "]", "[", "!\n", "..", "\n\n"]
    for _ in range(n):
        s = "".join(rng.choice(words) for _ in range(rng.randint(1, 25)))
        yield s, rng.randint(0, len(s))


def _check_keep_rule(tok):
    from slmkit.agents.llm import AgentLLM

    codec = AgentLLM.__new__(AgentLLM)
    codec.tokenizer = tok
    straddled = 0
    for s, k in _cases(tok):
        gen = tok.encode(s, add_special_tokens=False)
        traj = Trajectory(codec)
        traj.feed("Prompt:", "prompt")
        piece = traj.keep(s[:k], gen)
        if k == 0:
            assert piece is None
            continue
        assert tok.decode(piece.ids) == s[:k]
        assert piece.ids[:piece.generated] == gen[:piece.generated]  # generated ids kept as generated
        # maximal: one more generated id would no longer decode to a prefix of the kept text
        if piece.generated < len(gen):
            more = tok.decode(gen[:piece.generated + 1])
            assert not s[:k].startswith(more) or "\ufffd" in more
        straddled += bool(piece.info["retokenized"]) and piece.info["dropped_generated"] > 0
        assert tok.decode(traj.ids) == traj.text
    assert straddled > 10  # cuts inside a token happen and are handled


def test_kept_ids_rule_on_the_test_bpe(tok):
    _check_keep_rule(tok)


def test_kept_ids_rule_on_smollm2_tokenizer():
    from slmkit import hub
    from slmkit.model.tokenizer import load_tokenizer

    _check_keep_rule(load_tokenizer(hub.pull("smollm2-135m-instruct")["hf_dir"]))
