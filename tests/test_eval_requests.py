"""Our task configuration builds exactly the requests stock lm-eval builds from the same documents.

For every task of the xmodel13 suite (every leaf: 57 MMLU subjects, 27 BBH tasks, ...), the stock
task (lm-eval's own TaskManager, its own YAML) gets the same local documents injected through its
`download` (missing splits point at the pool our fallback uses, which is what stock lm-eval would do
given that data); both are given the suite's shots and lm-eval's default few-shot seed, and their
requests (type, doc, index, context, continuation / generation kwargs) must be identical.
"""

from __future__ import annotations

import pytest

LIMIT = 3
SEED = 1234


def _shots():
    from slmkit.evaluate.suites import load_suite

    return {t.task: t.num_fewshot for t in load_suite("xmodel13").tasks}


@pytest.fixture(scope="module")
def managers(data_dir):
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import TaskManager

    from slmkit.evaluate import code_metric, local_data
    from slmkit.evaluate.tasks import make_task_manager

    ours = make_task_manager("local")
    def inject(self, dataset_kwargs=None, **kwargs):
        local = local_data.load_local(self.config.dataset_path, self.config.dataset_name)
        pool = self.config.validation_split if self.config.validation_split in local.splits else next(iter(local.splits))
        extra = {s: pool for s in (self.config.training_split, self.config.validation_split, self.config.test_split)
                 if s and s not in local.splits}
        self.dataset = local_data.to_dataset_dict(local, extra)

    mp = pytest.MonkeyPatch()
    mp.setattr(ConfigurableTask, "download", inject)
    with code_metric.offline_code_eval(smoke_test=True):  # stock humaneval/mbpp modules load `code_eval` at import
        yield ours, TaskManager(), mp
    mp.undo()


def _requests(task, shots):
    task.set_config(key="num_fewshot", value=shots)  # as `lm_eval --num_fewshot`
    task.set_fewshot_seed(seed=SEED)
    task.build_all_requests(limit=LIMIT, rank=0, world_size=1)
    return [(i.request_type, i.doc_id, i.idx, i.args) for i in task.instances]


@pytest.mark.parametrize("suite_task", list(_shots()))
def test_requests_equal_stock(managers, suite_task):
    ours_tm, stock_tm, _ = managers
    shots = _shots()[suite_task]
    ours = ours_tm.load([suite_task])["tasks"]
    stock = stock_tm.load([suite_task])["tasks"]
    assert sorted(ours) == sorted(stock) and ours
    for name in sorted(ours):
        a, b = _requests(ours[name], shots), _requests(stock[name], shots)
        assert a, name
        assert a == b, f"{name}: requests differ from stock lm-eval"
        if ours[name].OUTPUT_TYPE == "generate_until":
            assert ours[name].config.generation_kwargs == stock[name].config.generation_kwargs


def test_fallback_excludes_current_doc(managers):
    """HellaSwag's few-shot examples come from validation, never the document being scored."""
    ours_tm = managers[0]
    task = ours_tm.load(["hellaswag"])["tasks"]["hellaswag"]
    task.set_config(key="num_fewshot", value=10)
    task.set_fewshot_seed(seed=SEED)
    task.build_all_requests(limit=20, rank=0, world_size=1)
    for inst in task.instances:
        ctx = inst.args[0]
        assert ctx.count(inst.doc["query"]) == 1
        assert ctx.count("\n\n") == 10


def test_code_metric_is_sandboxed(managers):
    ours_tm, stock_tm, _ = managers
    for name in ("humaneval", "mbpp"):
        task = ours_tm.load([name])["tasks"][name]
        assert list(task.aggregation()) == ["slmkit_pass_at_1"]
        assert list(stock_tm.load([name])["tasks"][name].aggregation()) == ["pass_at_k" if name == "humaneval" else "pass_at_1"]
