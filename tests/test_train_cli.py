"""CLI wiring (`add_commands`), `data prepare`, µP coord-check behaviour, repro smoke."""

from __future__ import annotations

import argparse
import json

import pytest

from slmkit.train.cli import add_commands, main


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small CPU training runs, one torch thread


def test_add_commands_registers_handlers():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    args = parser.parse_args(["train", "x.yaml", "--resume", "--set", "train.steps=5", "--set", "seed=1"])
    assert args.resume == "latest" and args.set == ["train.steps=5", "seed=1"] and callable(args.func)
    args = parser.parse_args(["train", "x.yaml", "--resume", "runs/a/checkpoints/stable-end"])
    assert args.resume.endswith("stable-end")
    for argv in (["data", "prepare", "--out", "o"], ["mup", "coord-check"], ["mup", "sweep"], ["repro", "fp8"]):
        assert callable(parser.parse_args(argv).func)


def test_train_cli_bad_config_is_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {precision: fp16}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "train.precision" in err and "\n" not in err


def test_data_prepare_cli(tmp_path, capsys):
    from slmkit.train.testing import tiny_tokenizer

    tok = tiny_tokenizer(tmp_path / "tok")
    rc = main(["data", "prepare", "--tokenizer", str(tok), "--out", str(tmp_path / "d"),
               "--source", "syn=synthetic:20", "--source", "math=$SLMKIT_DATA/pretrain_corpus/math_*.jsonl.gz",
               "--max-docs", "4"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sources"]["syn"]["docs"] == 20 and out["sources"]["math"]["docs"] == 4
    manifest = json.loads((tmp_path / "d/manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and (tmp_path / "d/math/00000.bin").exists()


def test_coord_check_mup_flatter_than_sp(tmp_path):
    from slmkit.train.experiments.mup_tools import coord_check

    res = coord_check(tmp_path, widths=(32, 128), steps=2, batch_size=4, seq_len=32)
    assert (tmp_path / "coord_check.png").exists() and (tmp_path / "coord_check.json").exists()
    mup, sp = res["summary"]["mup"], res["summary"]["sp"]
    for layer in ("layer0", "layer3"):  # hidden activations: SP grows with width, µP stays put
        assert sp[layer] > 2.0 and 0.5 < mup[layer] < 2.0, (mup, sp)


@pytest.mark.slow
def test_repro_quick_all(tmp_path):
    assert main(["repro", "all", "--quick", "--out", str(tmp_path)]) == 0
    for name in ("wsd-vs-cosine", "muon-decay", "fp8", "mup-transfer", "long-context"):
        assert (tmp_path / name / "results.md").exists()
    assert (tmp_path / "fp8/loss.png").exists() and (tmp_path / "mup-transfer/sweep.png").exists()
    assert (tmp_path / "mup-transfer/sweep_per_width.png").exists()
    res = json.loads((tmp_path / "long-context/results.json").read_text())
    assert len(res["rows"]) == 3 and res["hf_parity_max_abs_logit_diff_beyond_short"] < 1e-3
    assert (tmp_path / "long-context/loss_by_position.png").exists()


def test_trainer_imports_print_nothing_and_leave_torchao_alone():
    """torchao prints CUDA-library and pytree lines on import: only FP8 on CUDA may import it."""
    import subprocess
    import sys

    code = ("import sys, slmkit.train.trainer, slmkit.train.fp8, slmkit.train.cli; "
            "print('torchao' in sys.modules)")
    rc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert rc.returncode == 0 and rc.stdout.strip() == "False" and rc.stderr == "", rc.stderr
    main_cli = "import sys; from slmkit.cli import main; sys.argv = ['slmkit', 'train', '--help']; sys.exit(main())"
    rc = subprocess.run([sys.executable, "-c", main_cli], capture_output=True, text=True, timeout=120)
    assert rc.returncode == 0 and "config" in rc.stdout and rc.stderr == "", rc.stderr


def test_lr_sweep_refines_extra_seeds_and_resumes(tmp_path):
    from slmkit.train.experiments.mup_tools import lr_sweep

    lrs = (1e-3, 1e-2, 1e-1, 1.0)
    kw = dict(widths=(32,), lrs=lrs, steps=3, seeds={32: [0, 1]}, refine=True, params=("mup",), batch_size=2, seq_len=16)
    res = lr_sweep(tmp_path, **kw)
    runs = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    first = {r["lr"]: r["loss"] for r in runs if r["seed"] == 0}
    assert sorted(first) == list(lrs)
    b = lrs.index(min(first, key=first.get))
    assert sorted(r["lr"] for r in runs if r["seed"] == 1) == sorted(lrs[max(0, b - 1):b + 2])
    assert res["best_lr"]["mup"][32] in lrs[max(0, b - 1):b + 2]  # chosen among LRs every seed ran
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"param": "mup", "wid')  # a torn line from a killed sweep
    again = lr_sweep(tmp_path, **kw)  # everything cached: same answer, no new runs
    assert again["best_lr"] == res["best_lr"]
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == len(runs) + 1
