"""`slmkit export onnx`: a KV-cache decoder graph for ONNX Runtime / optimum, with a parity gate.

One graph serves prefill (past length 0) and decode. The output folder holds model.onnx (+ external
data when > 2 GB), config.json / generation_config.json (HF style, so optimum and ORT GenAI users find
the shapes), tokenizer files, slmkit_onnx.json (the I/O contract) and parity.json. It is built in a
temp folder and swapped in only after the parity gate passes, so a bad export never replaces a good one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.export.genai import write_genai_config
from slmkit.paths import atomic_dir, atomic_write_json

FORMAT = "slmkit-onnx"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
META_FILE = "slmkit_onnx.json"
REPORT_FILE = "parity.json"
EXTERNAL_DATA_LIMIT = 1_800_000_000  # bytes of weights above which protobuf's 2 GB cap needs external data
FP32_BOUND = 1e-4
# int8 dynamic quantization: per-type defaults from the shared parity table, plus a KV-path bound
INT8_KV_MIN_TOP1 = 0.9
INT8_METHODS = ("blockwise", "dynamic")
BLOCK_SIZE = 32


def export_onnx(model_path: str | Path, out_dir: str | Path, int8: bool = False, parity: bool = True,
                bounds: dict[str, float] | None = None, exporter: str = "auto", per_channel: bool = True,
                opset: int = 18, quiet: bool = True, parity_batches: list[list[int]] | None = None,
                int8_method: str = "blockwise") -> dict[str, Any]:
    """Export MODEL (slmkit checkpoint or HF Llama folder) to OUTDIR; returns the slmkit_onnx.json record.

    bounds: int8 parity bounds (keys of slmkit.export.parity.BOUND_KEYS); fp32 is always 1e-4 relative.
    exporter: "auto" (dynamo, TorchScript on failure), "dynamo" or "torchscript".
    int8_method: "blockwise" (default) or "dynamic"; see quantize_int8.
    parity_batches: token id lists to gate on (default: the shared held-out text). A small in-domain model
    is nearly uniform on generic text, where int8 top-1 flips are noise; pass in-domain text for it.
    """
    from slmkit.model.hf import load_any, tokenizer_dir_of

    if int8_method not in INT8_METHODS:
        raise SlmkitError(f"onnx export: int8 method '{int8_method}' unknown ({', '.join(INT8_METHODS)})")
    model_path, out_dir = Path(model_path), Path(out_dir)
    model = load_any(model_path).float().eval()
    tok_dir = tokenizer_dir_of(model_path)
    batches = parity_batches or (_default_batches(model, tok_dir, model_path) if parity else None)
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(prefix=".onnx-fp32-", dir=out_dir.parent) as scratch:
        fp32_path = (Path(scratch) if int8 else tmp) / MODEL_FILE
        used = export_graph(model, fp32_path, exporter=exporter, opset=opset, quiet=quiet)
        write_sidecars(tmp, model, tok_dir)
        write_genai_config(tmp)  # ONNX Runtime GenAI runs this folder as it is (slmkit.export.genai)
        record = _record(model, used, opset, int8, per_channel, model_path, int8_method)
        sibling = out_dir.parent / f"{out_dir.name}.{REPORT_FILE}"  # readable even when the gate fails
        if int8:
            if parity:  # gate the float graph first: a quantization bound must not hide an export bug
                shutil.copy2(tmp / "config.json", Path(scratch) / "config.json")
                pre = _gate(model, Path(scratch), False, None, sibling, out_dir, batches)
                record["fp32_parity"] = {k: pre[k] for k in ("passed", "max_rel_err", "top1_agreement", "kv_cache")}
            quantize_int8(fp32_path, tmp / MODEL_FILE, per_channel=per_channel, method=int8_method)
        atomic_write_json(tmp / META_FILE, record)
        if parity:
            report = _gate(model, tmp, int8, bounds, sibling, out_dir, batches)
            atomic_write_json(tmp / REPORT_FILE, report)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sibling)
            record["parity"] = {k: report[k] for k in ("passed", "max_rel_err", "top1_agreement", "ppl_ratio")}
            record["kv_cache"] = report["kv_cache"]
        record["seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(tmp / META_FILE, record)
    return record


# ---- graph -------------------------------------------------------------------------------------

def export_graph(model, path: Path, exporter: str = "auto", opset: int = 18, quiet: bool = True) -> str:
    """Write the decoder graph to `path`; returns the exporter that worked ("dynamo" or "torchscript")."""
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise SlmkitError(f"onnx export: exporter '{exporter}' unknown (auto, dynamo, torchscript)")
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors = []
    for name in order:
        try:
            _torch_export(model, path, dynamo=name == "dynamo", opset=opset, quiet=quiet)
            return name
        except SlmkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - exporter failures come in many types; fall back, then report
            errors.append(f"{name}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
            for leftover in path.parent.glob(path.name + "*"):
                leftover.unlink()
    raise SlmkitError(f"{path}: ONNX export failed ({'; '.join(errors)})")


def _torch_export(model, path: Path, dynamo: bool, opset: int, quiet: bool) -> None:
    import torch

    from slmkit.export.onnx_model import OnnxDecoder, dynamic_axes, example_inputs, io_names

    wrapper = OnnxDecoder(model).eval()
    n = model.cfg.n_layers
    inputs, outputs = io_names(n)
    big = sum(p.numel() for p in model.parameters()) * 4 > EXTERNAL_DATA_LIMIT
    kwargs: dict[str, Any] = dict(input_names=inputs, output_names=outputs, dynamic_axes=dynamic_axes(n))
    if dynamo:
        kwargs.update(dynamo=True, external_data=big, opset_version=opset, verbose=False)
    else:
        kwargs.update(dynamo=False, opset_version=min(opset, 17), do_constant_folding=True)
    sink = io.StringIO()
    muted = contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext()
    with torch.no_grad(), warnings.catch_warnings(), _quiet_logs(quiet), muted:
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, example_inputs(model), str(path), **kwargs)
    if not path.exists():
        raise RuntimeError("exporter wrote no file")
    if not dynamo and big:  # TorchScript writes one protobuf; move weights out when too large
        import onnx

        proto = onnx.load(str(path))
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")


@contextlib.contextmanager
def _quiet_logs(quiet: bool):
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, old):
            lg.setLevel(level)


# ---- int8 --------------------------------------------------------------------------------------

def quantize_int8(src: Path, dst: Path, per_channel: bool = True, method: str = "blockwise") -> None:
    """int8 weights for every MatMul with a constant weight (the lm_head included).

    blockwise: MatMulNBits, 8-bit symmetric blocks of 32 along K, int8 compute with per-block activation
      scales (accuracy_level 4). Default: on SmolLM2-135M it keeps top-1 0.945 / ppl x1.013.
    dynamic: quantize_dynamic (per-channel weights, one activation scale per tensor per call). Faster, but
      outlier activations (down_proj inputs) wreck it on real models: top-1 0.63 / ppl x1.66 on SmolLM2-135M.
    A tied lm_head reads the embedding through Transpose(E), which quantizers skip (not a constant), so
    the lm_head MatMul first gets its own E^T initializer; the Gather keeps fp32 E.
    """
    import onnx

    big = src.stat().st_size > EXTERNAL_DATA_LIMIT or any(src.parent.glob(src.name + ".data"))
    # the quantizers log advice and per-node progress on the root and their own loggers
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer"),
               logging.getLogger("onnxruntime.quantization")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        proto = onnx.load(str(src))
        untie_lm_head(proto)
        if method == "blockwise":
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quant = MatMulNBitsQuantizer(proto, bits=8, block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=4)
            quant.process()
            quant.model.save_model_to_file(str(dst), use_external_data_format=big)
        else:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with tempfile.TemporaryDirectory(prefix=".onnx-q-", dir=dst.parent) as scratch:
                untied = Path(scratch) / "untied.onnx"
                onnx.save_model(proto, str(untied), save_as_external_data=big, all_tensors_to_one_file=True,
                                location="untied.onnx.data")
                quantize_dynamic(str(untied), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                                 per_channel=per_channel, use_external_data_format=big,
                                 extra_options={"MatMulConstBOnly": True})
    except SlmkitError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SlmkitError(f"{src}: int8 quantization failed ({str(exc).strip().splitlines()[0]})") from None
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def untie_lm_head(proto) -> bool:
    """Replace MatMul(x, Transpose(initializer)) by MatMul(x, initializer^T); True when something changed."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    changed = False
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        tr = producers.get(node.input[1])
        if tr is None or tr.op_type != "Transpose" or tr.input[0] not in inits:
            continue
        perm = [list(a.ints) for a in tr.attribute if a.name == "perm"]
        if perm and perm[0] != [1, 0]:
            continue
        weight = numpy_helper.to_array(inits[tr.input[0]], base_dir="")
        if weight.ndim != 2:
            continue
        name = f"{tr.input[0]}.T"
        if name not in inits:
            tensor = numpy_helper.from_array(np.ascontiguousarray(weight.T), name)
            graph.initializer.append(tensor)
            inits[name] = tensor
        node.input[1] = name
        changed = True
    if changed:  # drop Transposes nobody reads any more
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Transpose" and not any(o in used for o in n.output)]
        for n in dead:
            graph.node.remove(n)
    return changed


# ---- folder contents ---------------------------------------------------------------------------

def write_sidecars(folder: Path, model, tokenizer_dir: Path | None) -> None:
    from slmkit.model.hf import generation_config, hf_config
    from slmkit.model.tokenizer import copy_tokenizer_files

    atomic_write_json(folder / "config.json", hf_config(model.cfg))
    atomic_write_json(folder / "generation_config.json", generation_config(model.cfg))
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, folder)


def _record(model, exporter: str, opset: int, int8: bool, per_channel: bool, source: Path,
            int8_method: str = "blockwise") -> dict[str, Any]:
    from slmkit.export.onnx_model import io_names

    cfg = model.cfg
    inputs, outputs = io_names(cfg.n_layers)
    kv = ["batch_size", cfg.n_kv_heads, "past_sequence_length", cfg.hd]
    shapes = {"input_ids": ["batch_size", "sequence_length"], "attention_mask": ["batch_size", "total_sequence_length"],
              "position_ids": ["batch_size", "sequence_length"], "logits": ["batch_size", "sequence_length", cfg.vocab_size]}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model_file": MODEL_FILE, "source": str(source),
        "exporter": exporter, "opset": opset if exporter == "dynamo" else min(opset, 17),
        "dtype": f"int8-{int8_method}" if int8 else "float32",
        "quantization": ({"method": "MatMulNBits (onnxruntime MatMulNBitsQuantizer)", "bits": 8, "block_size": BLOCK_SIZE,
                          "symmetric": True, "accuracy_level": 4} if int8_method == "blockwise" else
                         {"method": "onnxruntime.quantize_dynamic", "weight_type": "QInt8", "per_channel": per_channel})
                        | {"ops": ["MatMul"], "tied_lm_head": "own int8 E^T; Gather keeps fp32 E"} if int8 else None,
        "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "head_dim": cfg.hd,
        "vocab_size": cfg.vocab_size, "max_seq_len": cfg.max_seq_len,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "mup": "applied inside the graph (logits are the native µP-scaled logits)",
        "inputs": [{"name": n, "dtype": "int64" if i < 3 else "float32",
                    "shape": shapes.get(n, kv)} for i, n in enumerate(inputs)],
        "outputs": [{"name": n, "dtype": "float32",
                     "shape": shapes.get(n, ["batch_size", cfg.n_kv_heads, "total_sequence_length", cfg.hd])}
                    for n in outputs],
        "kv_layout": "[batch, n_kv_heads, seq, head_dim]",
    }


# ---- parity gate -------------------------------------------------------------------------------

def _default_batches(model, tok_dir: Path | None, model_path: Path | None = None) -> list[list[int]]:
    """The gate text stored with the model (gate_text.txt), else the shared generic passage (seeded random
    ids without a tokenizer); `slmkit.export.parity.gate_batches` decides and records which."""
    from slmkit.export.parity import gate_batches
    from slmkit.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok_dir) if tok_dir is not None else None
    return gate_batches(model_path, tokenizer, model.cfg.vocab_size, max_seq_len=model.cfg.max_seq_len)


def _gate(model, folder: Path, int8: bool, bounds: dict | None, report_path: Path | None, out_dir: Path,
          batches: list[list[int]]) -> dict:
    """Logit parity vs torch fp32 + KV-cache path check; raises SlmkitError naming OUTDIR on failure."""
    from slmkit.export.parity import run_parity
    from slmkit.serve.onnx_backend import OnnxRuntime

    runtime = OnnxRuntime(folder)
    try:
        longest = max(batches, key=len)
        if len(longest) < 2:
            raise SlmkitError(f"{out_dir}: parity needs at least one token batch of length >= 2")
        kv = check_kv_cache(model, runtime, longest, int8)
        runtime.path = out_dir  # reports and messages name the destination, not the temp folder
        report = run_parity(model, runtime, batches, quantized=int8, bounds=bounds if int8 else None,
                            report_path=report_path, qtype="int8" if int8 else None, extra={"kv_cache": kv})
        if not kv["passed"]:
            if report_path is not None:
                atomic_write_json(report_path, {**report, "passed": False, "failures": [kv["failure"]]})
            raise SlmkitError(f"{out_dir}: parity gate failed: {kv['failure']}"
                              + (f" (report: {report_path})" if report_path else ""))
        return report
    finally:
        runtime.close()


def check_kv_cache(model, runtime, ids: list[int], int8: bool) -> dict[str, Any]:
    """Prefill half the ids, decode the rest one at a time: the logits must match the full pass."""
    import torch

    ids = list(ids)[:24]
    split = len(ids) // 2
    logits, past = runtime.forward(ids[:split], None)
    rows = [logits[0]]
    for t in ids[split:]:
        step, past = runtime.forward([t], past)
        rows.append(step[0])
    got = np.concatenate(rows, 0)
    if int8:  # activations are quantized per call, so compare with the runtime's own full pass
        ref = np.asarray(runtime.logits(ids), dtype=np.float32)
    else:
        with torch.no_grad():
            ref = model(torch.tensor([ids]))[0].float().numpy()
    rel = float(np.abs(got.astype(np.float64) - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    result: dict[str, Any] = {"tokens": len(ids), "prefill": split, "max_rel_err": rel, "top1_agreement": top1,
                              "reference": "onnx full pass" if int8 else "torch fp32 full pass"}
    if int8:
        result["passed"] = top1 >= INT8_KV_MIN_TOP1
        result["bound"] = {"min_top1": INT8_KV_MIN_TOP1}
        failure = f"KV-cache path top-1 agreement {top1:.3f} < {INT8_KV_MIN_TOP1}"
    else:
        result["passed"] = rel <= FP32_BOUND
        result["bound"] = {"max_rel_err": FP32_BOUND}
        failure = f"KV-cache path (prefill+decode) differs from the full pass: max relative logit error {rel:.3g} > {FP32_BOUND:g}"
    if not result["passed"]:
        result["failure"] = failure
    return result


def text_batches(folder: str | Path, text: str, seq_len: int = 64, max_batches: int = 8) -> list[list[int]]:
    """Parity token batches from a text with MODEL's tokenizer (for `--parity-text`)."""
    from slmkit.model.hf import tokenizer_dir_of
    from slmkit.model.tokenizer import load_tokenizer

    tok_dir = tokenizer_dir_of(folder)
    if tok_dir is None:
        raise SlmkitError(f"{folder}: --parity-text needs the model's tokenizer.json")
    ids = load_tokenizer(tok_dir).encode(text, add_special_tokens=False)
    batches = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)][:max_batches]
    batches = [b for b in batches if len(b) >= 2]
    if not batches:
        raise SlmkitError(f"{folder}: the parity text gives fewer than 2 tokens")
    return batches
