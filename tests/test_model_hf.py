"""The spine: native µP model ⇄ plain HF Llama, exactly; checkpoints; config validation."""

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from slmkit.errors import SlmkitError
from slmkit.model import KVCache, ModelConfig, Transformer
from slmkit.model.checkpoint import load_checkpoint, save_checkpoint
from slmkit.model.hf import config_from_hf, export_hf, import_hf
from slmkit.model.mup import param_groups

SHAPES = [
    # odd sizes, non-default µP and RoPE
    dict(vocab_size=1000, d_model=96, n_layers=3, n_heads=6, n_kv_heads=2, d_ff=200, scale_emb=7.5, scale_depth=2.3,
         dim_model_base=32, rope_theta=777.0, init_std=0.1),
    dict(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=320, scale_emb=12.0, scale_depth=1.4,
         dim_model_base=256, init_std=0.1, rope_theta=500000.0),
    # separate residual scales, output scale, untied head, MHA (no GQA), explicit head_dim
    dict(vocab_size=777, d_model=80, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=150, tie_embeddings=False, scale_emb=3.0,
         scale_depth_attn=1.1, scale_depth_ffn=0.7, scale_output=2.0, dim_model_base=16, head_dim=24, norm_eps=1e-6),
    # plain Llama (no µP)
    dict(vocab_size=300, d_model=64, n_layers=2, n_heads=8, n_kv_heads=1, d_ff=128),
]


def _rel(a, b):
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s['d_model']}-L{s['n_layers']}-h{s['n_heads']}kv{s['n_kv_heads']}")
def test_stock_transformers_matches_native(shape, tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**shape)).eval()
    with torch.no_grad():  # perturb norm gains so the fold of the final norm is really exercised
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.mul_(1 + 0.1 * torch.randn_like(p))
    export_hf(model, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.randint(0, shape["vocab_size"], (2, 41))
    with torch.no_grad():
        assert _rel(model(ids), hf(ids).logits) <= 1e-5
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["rope_theta"] == model.cfg.rope_theta  # 4.x readers
    assert cfg["rope_parameters"]["rope_theta"] == model.cfg.rope_theta  # 5.x readers
    assert "lm_head.weight" not in load_file(tmp_path / "hf" / "model.safetensors") or not model.cfg.tie_embeddings


def test_hf_native_hf_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    model = Transformer(ModelConfig(**SHAPES[0])).eval()
    export_hf(model, tmp_path / "a")
    export_hf(import_hf(tmp_path / "a"), tmp_path / "b")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = json.loads((tmp_path / "a" / "config.json").read_text()), json.loads((tmp_path / "b" / "config.json").read_text())
    assert ca == cb


def test_import_plain_llama_written_by_transformers(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1234.0,
                                      tie_word_embeddings=False)).eval()
    hf.save_pretrained(tmp_path / "hf")
    native = import_hf(tmp_path / "hf")
    ids = torch.randint(0, 500, (1, 17))
    with torch.no_grad():
        assert _rel(hf(ids).logits, native(ids)) <= 1e-5
    assert native.cfg.rope_theta == 1234.0 and not native.cfg.tie_embeddings


def test_import_xmodel_style_mup_config(tmp_path):
    """Xmodel-2 naming: mup_* fields, weights unfolded; separate attention/FFN residual scales."""
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=400, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=128, scale_emb=12.0,
                      scale_depth_attn=1.4, scale_depth_ffn=1.2, scale_output=1.5, dim_model_base=16)
    native = Transformer(cfg).eval()
    folder = tmp_path / "xmodel"
    folder.mkdir()
    config = {"model_type": "xmodel", "vocab_size": 400, "hidden_size": 64, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
              "max_position_embeddings": 512, "rms_norm_eps": cfg.norm_eps, "rope_theta": 10000.0,
              "tie_word_embeddings": True, "mup_input_scale": 12.0, "mup_output_scale": 1.5,
              "mup_attention_residual_scale": 1.4, "mup_ffn_residual_scale": 1.2, "mup_base_width": 16}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"model." + k: v.contiguous() for k, v in native.state_dict().items()}, str(folder / "model.safetensors"))
    imported = import_hf(folder)
    assert imported.cfg.residual_scale("attn") == pytest.approx(1.4 / math.sqrt(3))
    assert imported.cfg.residual_scale("ffn") == pytest.approx(1.2 / math.sqrt(3))
    assert imported.cfg.logit_scale == pytest.approx(1.5 / 4)
    ids = torch.randint(0, 400, (2, 9))
    with torch.no_grad():
        assert torch.equal(native(ids), imported(ids))
    # ...and it exports to a plain Llama that stock transformers runs identically
    export_hf(imported, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        assert _rel(native(ids), hf(ids).logits) <= 1e-5


def test_kv_cache_and_padding_match_full_forward():
    torch.manual_seed(4)
    model = Transformer(ModelConfig(**SHAPES[0])).eval()
    ids = torch.randint(0, 1000, (2, 30))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.cfg, 2, 40)
        parts = [model(ids[:, :12], cache=cache), model(ids[:, 12:20], cache=cache)]
        parts += [model(ids[:, t:t + 1], cache=cache) for t in range(20, 30)]
        assert _rel(full, torch.cat(parts, 1)) <= 1e-5
        # left padding with explicit positions gives the same logits as the unpadded row
        padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids[:1]], 1)
        mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 30)], 1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0).long()
        out = model(padded, attention_mask=mask, position_ids=pos)[:, 5:]
        assert _rel(full[:1], out) <= 1e-5


def test_mup_param_groups_and_init():
    cfg = ModelConfig(vocab_size=100, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, dim_model_base=32,
                      init_std=0.2)
    model = Transformer(cfg)
    groups = {g["kind"]: g for g in param_groups(model, lr=0.01, weight_decay=0.1)}
    assert groups["hidden"]["lr"] == pytest.approx(0.01 / 4)
    assert groups["embedding"]["lr"] == pytest.approx(0.01)
    assert groups["norm"]["weight_decay"] == 0.0 and groups["hidden"]["weight_decay"] == 0.1
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == model.num_params()
    assert float(model.layers[0].mlp.up_proj.weight.detach().std()) == pytest.approx(0.2 / 2, rel=0.05)


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(5)
    model = Transformer(ModelConfig(**SHAPES[3])).eval()
    ckpt = save_checkpoint(tmp_path / "ckpt", model, meta={"step": 7})
    loaded, record = load_checkpoint(ckpt)
    assert record["meta"]["step"] == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))

    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(SlmkitError, match="truncated"):
        load_checkpoint(ckpt)
    weights.write_bytes(data[:-8] + b"\x00" * 8)  # same size, corrupt contents
    with pytest.raises(SlmkitError, match="sha256"):
        load_checkpoint(ckpt)
    with pytest.raises(SlmkitError, match="corrupt"):
        _load_garbage(ckpt, data)
    weights.write_bytes(data)
    meta = ckpt / "slmkit.json"
    record = json.loads(meta.read_text())
    record["model"]["d_model"] = 96  # mismatched config vs tensors
    meta.write_text(json.dumps(record))
    with pytest.raises(SlmkitError, match="shape"):
        load_checkpoint(ckpt)
    meta.write_text("{not json")
    with pytest.raises(SlmkitError, match="corrupt JSON"):
        load_checkpoint(ckpt)
    meta.unlink()
    with pytest.raises(SlmkitError, match="slmkit.json: missing"):
        load_checkpoint(ckpt)


def _load_garbage(ckpt, data):
    weights = ckpt / "model.safetensors"
    weights.write_bytes(b"\xff" * len(data))
    return load_checkpoint(ckpt, verify=False)


def test_atomic_save_keeps_old_checkpoint_on_failure(tmp_path):
    model = Transformer(ModelConfig(**SHAPES[3]))
    ckpt = save_checkpoint(tmp_path / "ckpt", model, meta={"step": 1})

    def boom(_tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(ckpt, model, meta={"step": 2}, extra=boom)
    assert load_checkpoint(ckpt)[1]["meta"]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@pytest.mark.parametrize("field,value,needle", [
    ("d_model", 97, "d_model"), ("n_kv_heads", 4, "n_kv_heads"), ("rope_theta", -1.0, "rope_theta"),
    ("scale_emb", 0, "scale_emb"), ("vocab_size", "big", "vocab_size"),
])
def test_bad_config_values_give_one_line_errors(field, value, needle):
    data = ModelConfig(n_heads=6, n_kv_heads=2, d_model=96).to_dict()
    data[field] = value
    with pytest.raises(SlmkitError) as info:
        ModelConfig.from_dict(data, source="cfg.yaml")
    message = str(info.value)
    assert needle in message and "cfg.yaml" in message and "\n" not in message


def test_config_file_and_presets(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model:\n  preset: nano\n  d_model: 96\n  n_heads: 6\n")
    cfg = ModelConfig.from_file(path)
    assert cfg.d_model == 96 and cfg.scale_emb == 12.0
    big = ModelConfig.from_preset("xmodel2.5-1.3b")
    assert (big.d_model, big.d_ff, big.n_layers, big.n_heads, big.n_kv_heads, big.vocab_size) == (1536, 3840, 48, 24, 8, 129280)
    assert big.residual_scale("attn") == pytest.approx(1.4 / math.sqrt(48)) and big.width_mult == 6.0
    path.write_text("model:\n  d_model: 96\n  n_heads: 6\n  colour: red\n")
    with pytest.raises(SlmkitError, match="unknown field 'colour'"):
        ModelConfig.from_file(path)


def test_hf_config_importer_rejects_unsupported(tmp_path):
    with pytest.raises(SlmkitError, match="model_type"):
        config_from_hf({"model_type": "gpt2"})
    with pytest.raises(SlmkitError, match="rope type"):
        config_from_hf({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
                        "intermediate_size": 8, "vocab_size": 10, "rope_scaling": {"rope_type": "yarn"}})


def test_cli_export_hf_and_corrupt_checkpoint_error(tmp_path):
    model = Transformer(ModelConfig(**SHAPES[0]))
    ckpt = save_checkpoint(tmp_path / "ckpt", model)
    run = [sys.executable, "-m", "slmkit.cli", "export", "hf", str(ckpt), str(tmp_path / "hf")]
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "parity" in out.stdout
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "model.safetensors" in lines[0], out.stderr
