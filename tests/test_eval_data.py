"""Offline data, suites, clear errors, sandboxed pass@1, reports and compare (no model needed)."""

from __future__ import annotations

import json
import shutil

import pytest

from slmkit.errors import SlmkitError


@pytest.fixture
def fake_data(tmp_path, monkeypatch, data_dir):
    """A private SLMKIT_DATA holding a copy of ARC-Easy (so tests may break it)."""
    root = tmp_path / "data"
    shutil.copytree(data_dir / "benchmarks" / "arc_easy", root / "benchmarks" / "arc_easy")
    for f in (root / "benchmarks" / "arc_easy").iterdir():
        f.chmod(0o644)
    monkeypatch.setenv("SLMKIT_DATA", str(root))
    from slmkit.evaluate import local_data

    local_data.load_local.cache_clear()
    yield root
    local_data.load_local.cache_clear()


def test_local_docs_match_hub_schema(data_dir):
    from slmkit.evaluate.local_data import load_local

    mmlu = load_local("cais/mmlu", "abstract_algebra")
    assert len(mmlu.splits["dev"]) == 5 and mmlu.splits["test"][0]["answer"] == 1
    assert mmlu.splits["test"][0]["choices"] == ["0", "4", "2", "6"]
    mbpp = load_local("google-research-datasets/mbpp", "full")
    assert [len(mbpp.splits[s]) for s in ("prompt", "test", "validation", "train")] == [10, 500, 90, 374]
    piqa = load_local("baber/piqa", None)
    assert len(piqa.splits["validation"]) == 1838 and set(piqa.splits) == {"validation"}
    assert len(load_local("ceval/ceval-exam", "accountant").splits["val"]) == 49
    assert all(len(v) == 64 for v in mmlu.sha256().values())


def test_malformed_line_names_file_and_line(fake_data):
    from slmkit.evaluate.local_data import load_local

    path = fake_data / "benchmarks" / "arc_easy" / "test.jsonl"
    lines = path.read_text().splitlines()
    lines[6] = '{"id": "broken", "question": '
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SlmkitError, match=r"test\.jsonl:7: malformed JSON line"):
        load_local("allenai/ai2_arc", "ARC-Easy")


def test_missing_file_names_path_and_setting(fake_data):
    from slmkit.evaluate.local_data import load_local

    (fake_data / "benchmarks" / "arc_easy" / "train.jsonl").unlink()
    with pytest.raises(SlmkitError, match=r"missing data file .*arc_easy/train\.jsonl \(set SLMKIT_DATA"):
        load_local("allenai/ai2_arc", "ARC-Easy")
    with pytest.raises(SlmkitError, match=r"hellaswag_validation\.jsonl\.gz \(set SLMKIT_DATA"):
        load_local("Rowan/hellaswag", None)


def test_declared_splits_are_the_loaded_ones(data_dir):
    """The task configs are written from local_splits(); every loader must return exactly those splits."""
    from slmkit.evaluate.local_data import LOADERS, load_local, local_splits

    configs = {"allenai/ai2_arc": "ARC-Easy", "SaylorTwift/bbh": "navigate", "cais/mmlu": "astronomy",
               "EleutherAI/hendrycks_math": "algebra", "google-research-datasets/mbpp": "full",
               "haonan-li/cmmlu": "anatomy", "ceval/ceval-exam": "law", "allenai/winogrande": "winogrande_xl"}
    seen = set()
    for path, loader in LOADERS.items():
        if loader in seen:
            continue
        seen.add(loader)
        assert sorted(load_local(path, configs.get(path)).splits) == sorted(local_splits(path)), path


@pytest.fixture(scope="module")
def local_tm(data_dir):
    from slmkit.evaluate.tasks import make_task_manager

    return make_task_manager("local")


def test_missing_file_fails_when_the_task_is_built(fake_data, local_tm):
    (fake_data / "benchmarks" / "arc_easy" / "train.jsonl").unlink()
    with pytest.raises(SlmkitError, match=r"missing data file .*arc_easy/train\.jsonl \(set SLMKIT_DATA"):
        local_tm.load(["arc_easy"])


def test_missing_split_is_one_line(local_tm):
    """A group asking for a split the staged copy lacks (the Open LLM group's `fewshot_split: train`)."""
    group = {"group": "slmkit_probe", "task": [{"task": "winogrande", "fewshot_split": "train"}]}
    with pytest.raises(SlmkitError, match=r"^task 'winogrande': split 'train' is missing from \$SLMKIT_DATA/benchmarks/winogrande \(has: validation\)$"):
        local_tm.load([group])


def test_local_mode_refuses_hub_data_and_pass_at_k(local_tm):
    with pytest.raises(SlmkitError, match=r"task 'lambada_openai' reads dataset '.*', which has no local copy"):
        local_tm.load(["lambada_openai"])
    with pytest.raises(SlmkitError, match=r"task 'humaneval_64': pass@\[2, 8, 16, 32, 64\] is not supported"):
        local_tm.load(["humaneval_64"])


def test_records_name_files_and_fallbacks(local_tm):
    from slmkit.evaluate.tasks import finalize_records

    tasks = {**local_tm.load(["winogrande"])["tasks"], **local_tm.load(["arc_easy"])["tasks"]}
    tasks["winogrande"].set_config(key="num_fewshot", value=5)
    tasks["arc_easy"].set_config(key="num_fewshot", value=25)
    rec = finalize_records(local_tm.slmkit_records, tasks)
    assert rec["winogrande"]["data"] == "local" and list(rec["winogrande"]["files"]) == ["winogrande/winogrande_xl_validation.jsonl"]
    assert rec["winogrande"]["fallback"].startswith("few-shot examples drawn from the 'validation' split (the evaluated split")
    assert rec["arc_easy"]["fallback"] is None and "arc_easy/train.jsonl" in rec["arc_easy"]["files"]
    tasks["winogrande"].set_config(key="num_fewshot", value=0)
    assert finalize_records(local_tm.slmkit_records, tasks)["winogrande"]["fallback"] is None


def test_hub_mode_changes_only_the_code_metric(data_dir):
    """--data hub: stock documents (no custom_dataset anywhere), HumanEval/MBPP still scored in the sandbox."""
    from pathlib import Path

    import lm_eval.tasks

    from slmkit.evaluate.tasks import make_task_manager

    hub = make_task_manager("hub")
    assert Path(hub.task_index["arc_easy"].yaml_path).parent.parent == Path(lm_eval.tasks.__file__).resolve().parent
    for name in ("humaneval", "mbpp"):
        cfg = hub.task_index[name].cfg
        assert cfg["metric_list"][0]["metric"] == "slmkit_pass_at_1" and cfg.get("custom_dataset") is None
    changed = {n: hub.task_index[n].cfg for n in hub.slmkit_records}
    assert sorted(changed) == sorted(hub.slmkit_code_tasks) and "humaneval_plus" in changed
    assert all(c.get("custom_dataset") is None or "slmkit_error" in c["dataset_kwargs"] for c in changed.values())


def test_unknown_task_and_suite_errors(data_dir):
    from slmkit.evaluate.runner import build_tasks
    from slmkit.evaluate.suites import SuiteTask, load_suite

    with pytest.raises(SlmkitError, match="unknown lm-eval task 'no_such_task'"):
        build_tasks([SuiteTask(name="x", task="no_such_task")], "local")
    with pytest.raises(SlmkitError, match="unknown suite 'nope'"):
        load_suite("nope")


def test_suite_is_the_published_13(data_dir):
    from slmkit.evaluate.suites import load_suite, published, select

    suite = load_suite("xmodel13")
    assert [t.name for t in suite.tasks] == published()["tasks"]
    assert [(t.task, t.num_fewshot, t.metric) for t in suite.tasks][:2] == [("arc_challenge", 25, "acc_norm"), ("arc_easy", 25, "acc_norm")]
    picked = select(suite, "gsm8k,MMLU,lambada_openai")
    assert [p.task for p in picked] == ["gsm8k", "mmlu", "lambada_openai"] and picked[2].metric is None


def test_sandboxed_pass_at_1():
    from slmkit.evaluate.code_metric import pass_at_1

    test = "def check(f):\n    assert f(2, 3) == 5\ncheck(add)"
    assert pass_at_1([test], [["def add(a, b):\n    return a + b"]]) == 1.0
    assert pass_at_1([test], [["def add(a, b):\n    return a * b"]]) == 0.0
    assert pass_at_1([test, test], ["def add(a, b):\n    return a + b", "import os\nos._exit(0)\ndef add(a, b): pass"]) == 0.5


def _record(label, values, limit=5, backend="hf"):
    from slmkit.evaluate.runner import average
    from slmkit.evaluate.suites import load_suite

    suite = load_suite("xmodel13")
    scores = [{"name": t.name, "task": t.task, "num_fewshot": t.num_fewshot, "metric": f"{t.metric},{t.filter}",
               "value": v, "stderr": None, "n": limit, "fallback": "pool from validation" if t.task == "hellaswag" else None}
              for t, v in zip(suite.tasks, values)]
    return {"label": label, "scores": scores, "average": average(scores, 13), "wall_seconds": 1.0,
            "manifest": {"suite": "xmodel13", "backend": backend, "lm_eval": "0.4.13", "slmkit": "0.1.0", "seed": 1234,
                         "data": "local", "limit": limit, "fallbacks": {"hellaswag": "pool from validation"},
                         "model": {"files": {"m.gguf": {"bytes": 1000000, "sha256": "ab" * 32}}}}}


def test_reports_and_compare(tmp_path):
    from slmkit.evaluate import report
    from slmkit.evaluate.compare import compare

    a = _record("fp32", [50.0] * 13)
    b = _record("q4_k_m", [40.0] * 12 + [None], backend="gguf")
    for rec, name in ((a, "a"), (b, "b")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(rec))
        paths = report.write_all(rec, tmp_path / name)
        md = paths["md"].read_text()
        assert "HellaSwag" in md and "† hellaswag: pool from validation" in md and "--limit 5" in md
        assert "Xmodel-2.5 (1.3B)" in md and "52.49" in md and "Llama-3.2-1B" in md
        assert paths["png"].read_bytes()[:4] == b"\x89PNG" and "<table>" in paths["html"].read_text()
    assert "(12 of 13)" in report.markdown(b)
    text = compare([tmp_path / "a", tmp_path / "b"])
    assert "| **Average** | **50.00** | **40.00** |" in text and "model size (MB) | 1.0 | 1.0" in text
    with pytest.raises(SlmkitError, match="nothing: missing"):
        compare([tmp_path / "nothing"])
