"""`slmkit eval --backend remote`: a model served by our own `serve api` on 127.0.0.1, evaluated through lm-eval,
gives the per-document scores and generations of the same model evaluated in-process."""

from __future__ import annotations

import json

import pytest

from slmkit.errors import SlmkitError
from test_app_support import running_api, tiny_model_dir  # noqa: F401


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with running_api(tiny_model_dir, parallel=2, max_queue=64) as (url, _service):
        yield url


def _samples(run) -> dict:
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    return {(r["task"], r["doc_id"]): r for r in rows}


def test_remote_eval_equals_the_local_model(server, tiny_model_dir, tmp_path, data_dir):
    """Loglikelihood (ARC-Easy) and greedy generation (GSM8K) through the server vs in-process torch, both at
    the same context length (the server's window less one: a scored prompt holds context + continuation)."""
    from slmkit.evaluate import lm
    from slmkit.evaluate.runner import run_eval

    kw = dict(tasks="arc_easy,gsm8k", limit=3, write_reports=False)
    remote = lm.RemoteLM(server + "/v1", tokenizer=str(tiny_model_dir), batch_size=4)
    local = lm.TorchLM(str(tiny_model_dir), batch_size=4, max_length=remote.max_length, threads=1)
    try:
        a = run_eval(server, backend="remote", lm=remote, out=tmp_path / "remote", **kw)
        b = run_eval(str(tiny_model_dir), backend="torch", lm=local, out=tmp_path / "local", **kw)
    finally:
        remote.runtime.close()
        local.runtime.close()
    assert a["manifest"]["backend"] == "remote"
    sa, sb = _samples(tmp_path / "remote"), _samples(tmp_path / "local")
    assert sa.keys() == sb.keys() and len(sa) == 6
    for key in sa:
        ra, rb = sa[key]["resps"], sb[key]["resps"]
        if key[0] == "gsm8k":
            assert ra == rb, key  # the same greedy text
        else:
            la = [float(r[0][0]) for r in ra]
            lb = [float(r[0][0]) for r in rb]
            assert la == pytest.approx(lb, rel=1e-4, abs=1e-3), key
            assert sa[key]["filtered_resps"] == sb[key]["filtered_resps"] or \
                [x[1] for x in sa[key]["filtered_resps"]] == [x[1] for x in sb[key]["filtered_resps"]]
    assert [(s["name"], s["value"]) for s in a["scores"]] == [(s["name"], s["value"]) for s in b["scores"]]


def test_remote_eval_through_the_cli(server, tiny_model_dir, tmp_path, data_dir, capsys):
    from slmkit.cli import main

    out = tmp_path / "cli"
    argv = ["eval", server, "--tasks", "arc_easy", "--limit", "2", "--out", str(out), "--tokenizer", str(tiny_model_dir)]
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["manifest"]["backend"] == "remote"
    capsys.readouterr()
    assert main(argv[:-2]) == 2  # no tokenizer: one error line
    assert "needs the served model's tokenizer folder" in capsys.readouterr().err


def test_remote_lm_without_a_server_is_one_error():
    from slmkit.evaluate import lm

    with pytest.raises(SlmkitError, match="no OpenAI-compatible server"):
        lm.RemoteLM("http://127.0.0.1:9/v1", tokenizer=".")
