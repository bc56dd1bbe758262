"""Unit checks of the trainer pieces: schedules, config errors, data shards + sampler, FP8, optimizers."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.train.config import load_config
from slmkit.train.schedule import Schedule


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small CPU training runs, one torch thread


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from slmkit.train.testing import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


# ---------------------------------------------------------------- schedule

@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt", "exponential"])
def test_wsd_phases_and_floor(shape):
    s = Schedule("wsd", 1.0, total=100, warmup=10, decay=20, shape=shape, floor=0.1)
    assert s.lr_at(0) == pytest.approx(0.1) and s.lr_at(9) == pytest.approx(1.0)
    assert all(s.lr_at(i) == 1.0 for i in range(10, 80))
    assert s.phase(79) == "stable" and s.phase(80) == "decay" and s.decay_start == 80
    decay = [s.lr_at(i) for i in range(80, 100)]
    assert all(a >= b for a, b in zip(decay, decay[1:])), decay
    assert decay[-1] == pytest.approx(0.1) and decay[0] < 1.0


def test_cosine_schedule_and_fractions():
    cfg, _ = load_config({"train": {"steps": 200}, "schedule": {"type": "cosine", "lr": 2.0, "warmup": 0.1,
                                                                "min_lr_ratio": 0.0}})
    s = Schedule.from_config(cfg)
    assert s.warmup == 20 and s.phase(199) == "stable"
    assert s.lr_at(19) == pytest.approx(2.0) and s.lr_at(199) < 0.01
    assert s.lr_at(20 + 90) == pytest.approx(1.0, abs=0.02)


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("override,needle", [
    ("train.precision=fp16", "train.precision"),
    ("schedule.decay_shape=step", "schedule.decay_shape"),
    ("train.batch_size=-3", "train.batch_size"),
    ("data.mix.stable.nosuch=1", "data.mix.stable.nosuch"),
    ("optimizer.decay=sgd", "optimizer.decay"),
])
def test_config_errors_name_the_field(override, needle):
    with pytest.raises(SlmkitError, match=needle.replace(".", r"\.")):
        load_config({}, [override])


def test_config_file_errors(tmp_path):
    with pytest.raises(SlmkitError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(SlmkitError, match="bad.yaml"):
        load_config(bad)


def test_shipped_recipes_validate():
    from slmkit.train.config import recipe_path, recipes

    names = recipes()
    assert {"nano-demo", "proxy-20m", "xmodel2.5-1.3b"} <= set(names)
    for name in names:
        cfg, source = load_config(name)  # a bare name resolves to the packaged recipe
        assert source == str(recipe_path(name)) and cfg["name"] == name


# ---------------------------------------------------------------- data

def test_prepare_synthetic_and_sampler(tok_dir, tmp_path):
    from slmkit.train.data import MixtureSampler, TokenSource, prepare, read_manifest

    manifest = prepare({"a": {"type": "synthetic", "docs": 50, "seed": 0},
                        "b": {"type": "synthetic", "docs": 30, "seed": 1}}, tok_dir, tmp_path, progress=False,
                       shard_tokens=1000)
    assert manifest["dtype"] == "uint16" and manifest["sources"]["a"]["docs"] == 50
    m = read_manifest(tmp_path)
    a = TokenSource(tmp_path, "a", m)
    assert len(a.arrays) > 1 and sum(x.size for x in a.arrays) == m["sources"]["a"]["tokens"]
    idx = np.load(tmp_path / m["sources"]["a"]["shards"][0]["index"])
    eos = m["eos_id"]
    first = a.arrays[0]
    assert idx[0] == 0 and all(first[i - 1] == eos for i in idx[1:])  # each document ends with EOS
    sources = {"a": a, "b": TokenSource(tmp_path, "b", m)}
    sampler = MixtureSampler(sources, {"stable": {"a": 1.0}, "decay": {"a": 0.5, "b": 0.5}}, seed=3, seq_len=16)
    g1 = sampler.batch(7, "stable", 8)
    assert g1.shape == (8, 17) and np.array_equal(g1, sampler.batch(7, "stable", 8))
    assert not np.array_equal(g1, sampler.batch(8, "stable", 8))
    halves = [sampler.batch(7, "stable", 8, rank=r, world=2) for r in range(2)]
    assert np.array_equal(np.concatenate(halves), g1)
    docs = MixtureSampler(sources, {"stable": {"a": 1.0, "b": 1.0}}, seed=3, seq_len=16, align="doc")
    rows = docs.batch(0, "stable", 32)
    tok_a = np.concatenate([np.asarray(x) for x in a.arrays])
    starts = {tuple(tok_a[i:i + 3]) for i in np.load(tmp_path / m["sources"]["a"]["shards"][0]["index"])}
    assert sum(tuple(r[:3]) in starts for r in rows) >= 8  # rows from source a begin at a document start


def test_prepare_pretrain_jsonl_uint32_for_big_vocab(tmp_path):
    from slmkit.paths import data_dir
    from slmkit.train.data import prepare, token_dtype

    assert token_dtype(1024) == np.uint16 and token_dtype(70000) == np.uint32
    root = data_dir() / "pretrain_corpus"
    tok = data_dir() / "tokenizers"
    assert root.is_dir()
    # any tokenizer we have works; prefer the small trained one
    from slmkit.train.testing import tiny_tokenizer

    t = tiny_tokenizer(tmp_path / "tok")
    m = prepare({"zh": {"type": "jsonl", "paths": [str(root / "zh_fortunes_poetry.jsonl.gz")], "max_docs": 5},
                 "code": {"type": "jsonl", "paths": ["$SLMKIT_DATA/pretrain_corpus/code_*.jsonl.gz"], "max_docs": 3}},
                t, tmp_path / "out", progress=False)
    assert m["sources"]["zh"]["docs"] == 5 and m["sources"]["code"]["docs"] == 3
    assert m["total_tokens"] > 100
    del tok


def test_bad_jsonl_names_file_and_line(tmp_path, tok_dir):
    from slmkit.train.data import prepare

    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(SlmkitError, match=r"x\.jsonl:2"):
        prepare({"x": {"type": "jsonl", "paths": [str(f)]}}, tok_dir, tmp_path / "o", progress=False)


# ---------------------------------------------------------------- FP8

def test_fp8_operands_are_e4m3_and_grads_e5m2():
    from slmkit.train.fp8 import E4M3, E5M2, Fp8Linear

    torch.manual_seed(0)
    lin = Fp8Linear(16, 8)
    lin.weight = torch.nn.Parameter(torch.randn(8, 16) * 0.1)
    lin.record = True
    x = torch.randn(4, 16, requires_grad=True)
    y = lin(x)
    (y * torch.randn_like(y) * 1e-3).sum().backward()
    r = lin.recorded
    assert r["input"].dtype == E4M3 and r["weight"].dtype == E4M3 and r["grad_output"].dtype == E5M2
    # amax maps to the format max: the scale is per tensor and amax-based
    assert r["input"].float().abs().max() == pytest.approx(448.0)
    assert r["grad_output"].float().abs().max() == pytest.approx(57344.0)
    # the forward really used the quantized operands
    xd, wd = r["input"].float() / r["input_scale"], r["weight"].float() / r["weight_scale"]
    assert torch.allclose(y, xd @ wd.T, atol=1e-6)
    assert not torch.allclose(xd, x.detach(), atol=1e-4)  # quantization is lossy...
    assert torch.allclose(xd, x.detach(), rtol=0.07, atol=1e-3)  # ...at E4M3 precision (3 mantissa bits)
    # and the backward the E5M2 gradient
    gd = r["grad_output"].float() / r["grad_scale"]
    assert torch.allclose(x.grad, gd @ wd, atol=1e-7)
    assert torch.allclose(lin.weight.grad, gd.T @ xd, atol=1e-7)


def test_fp8_delayed_scaling_uses_history():
    from slmkit.train.fp8 import E4M3, AmaxScaler

    s = AmaxScaler(history=4)
    assert s.scale(torch.tensor([2.0]), E4M3) == pytest.approx(448 / 2)  # first call: current amax
    assert s.scale(torch.tensor([1.0]), E4M3) == pytest.approx(448 / 2)  # uses history max (2)
    for _ in range(4):
        s.scale(torch.tensor([1.0]), E4M3)
    assert s.scale(torch.tensor([1.0]), E4M3) == pytest.approx(448.0)  # the 2 fell out of the window


def test_fp8_convert_respects_min_dim_and_keeps_names():
    from slmkit.model.config import ModelConfig
    from slmkit.model.transformer import Transformer
    from slmkit.train.fp8 import Fp8Linear, convert

    model = Transformer(ModelConfig.from_preset("nano", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                                                dim_model_base=16))
    keys = set(model.state_dict())
    cpu = torch.device("cpu")
    _, names = convert(model, {"fp8": {"backend": "emulate", "min_dim": 32, "amax_history": 1}}, cpu)
    # k/v projections are 32x16 (below min_dim): they stay fp32; embeddings/output are never converted
    assert sorted(n.split(".")[-1] for n in names) == ["down_proj", "gate_proj", "o_proj", "q_proj", "up_proj"]
    assert all(isinstance(model.get_submodule(n), Fp8Linear) for n in names)
    assert type(model.get_submodule("layers.0.self_attn.k_proj")) is torch.nn.Linear
    _, more = convert(model, {"fp8": {"backend": "emulate", "min_dim": 0, "amax_history": 1}}, cpu)
    assert sorted(more) == ["layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj"]
    assert set(model.state_dict()) == keys
    model(torch.randint(0, 1024, (1, 4))).sum().backward()


# ---------------------------------------------------------------- optimizers

def _tiny_model():
    from slmkit.model.config import ModelConfig
    from slmkit.model.transformer import Transformer

    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset("nano", d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=128,
                                               dim_model_base=16, vocab_size=64))


def test_switch_hands_hidden_matrices_to_muon_and_keeps_adamw_state():
    from slmkit.train import optim

    model = _tiny_model()
    cfg, _ = load_config({"schedule": {"lr": 0.01}, "optimizer": {"decay": "muon"}})
    dev = torch.device("cpu")
    opts = optim.build(model, cfg, optim.initial_owners(model), dev)
    hidden = [g for g in opts["adamw"].param_groups if g["kind"] == "hidden"][0]
    assert hidden["lr_scale"] == pytest.approx(16 / 64)  # µP: lr / m
    assert {g["kind"]: g["weight_decay"] for g in opts["adamw"].param_groups}["norm"] == 0.0
    x = torch.randint(0, 64, (2, 8))
    model(x).square().mean().backward()
    opts["adamw"].step()
    emb = model.embed_tokens.weight
    exp_avg = opts["adamw"].state[emb]["exp_avg"].clone()
    new, owners = optim.switch_to_muon(model, cfg, opts, dev)
    assert owners["layers.0.self_attn.q_proj.weight"] == "muon" and owners["embed_tokens.weight"] == "adamw"
    assert owners["layers.0.input_layernorm.weight"] == "adamw"
    muon_params = {id(p) for g in new["muon"].param_groups for p in g["params"]}
    adam_params = {id(p) for g in new["adamw"].param_groups for p in g["params"]}
    assert not muon_params & adam_params and len(muon_params) == 14
    assert torch.equal(new["adamw"].state[emb]["exp_avg"], exp_avg)
    assert new["muon"].param_groups[0]["lr_scale"] == pytest.approx(16 / 64)
    assert new["muon"].defaults["adjust_lr_fn"] == "match_rms_adamw"


def test_metrics_flops_counts():
    from slmkit.model.config import ModelConfig
    from slmkit.train.metrics import flops_per_token

    cfg = ModelConfig.from_preset("proxy-20m")
    f = flops_per_token(cfg, 1024)
    assert 6 * cfg.num_params() < f < 6 * cfg.num_params() * 1.5
    assert math.isfinite(f)
    assert os.environ.get("SLMKIT_DATA")
