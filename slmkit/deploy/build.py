"""Make each artifact of the menu through slmkit.export, parity-gated on text that fits the model.

One gate text for the whole menu (`slmkit.export.parity.gate_batches`: --gate-text FILE, the model's
gate_text.txt, the generic passage last), so every artifact is held to the same measurement. A gate
failure, or any export error, marks only that artifact failed; an artifact already built (its parity
report says passed) is reused, so a rerun never redoes an export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from slmkit.deploy.spec import ArtifactSpec
from slmkit.errors import SlmkitError
from slmkit.paths import read_json


def parity_file(spec: ArtifactSpec, path: Path) -> Path | None:
    if spec.kind == "gguf":
        return Path(f"{path}.parity.json")
    if spec.kind == "onnx":
        return path / "parity.json"
    return None


def trimmed_parity(report: dict | None) -> dict | None:
    """The headline numbers of a parity report (and which text the gate ran on)."""
    if not report:
        return None
    keep = {k: report.get(k) for k in ("passed", "max_rel_err", "top1_agreement", "ppl_ratio", "ppl_reference",
                                       "ppl_runtime", "mean_kl", "failures", "bounds")}
    gate = report.get("gate_text") or {}
    keep["gate_text"] = {k: gate.get(k) for k in ("kind", "label", "path", "tokens")}
    return keep


def built(spec: ArtifactSpec, path: Path) -> dict | None:
    """The record of an artifact already on disk with a passing gate, else None."""
    report_path = parity_file(spec, path)
    if report_path is None or not path.exists() or not report_path.is_file():
        return None
    try:
        report = read_json(report_path)
    except SlmkitError:
        return None
    if not report.get("passed"):
        return None
    return {"status": "ok", "path": str(path), "bytes": artifact_bytes(path), "parity": trimmed_parity(report)}


def artifact_bytes(path: Path) -> int:
    from slmkit.bench.bound import path_bytes

    return path_bytes(path)


class Builder:
    """Exports for one source model; the fp32 model and the gate batches are made once, on first need."""

    def __init__(self, model_path: Path, artifacts_dir: Path, gate_text: str | Path | None = None,
                 threads: int | None = None, say: Callable[[str], None] = print,
                 bounds: dict[str, dict[str, float | None]] | None = None):
        self.model_path, self.dir, self.gate_text, self.threads, self.say = model_path, artifacts_dir, gate_text, threads, say
        self.bounds = bounds or {}  # file type (e.g. "q4_0", "onnx-int8") -> parity bound overrides
        self._model = None
        self._batches = None

    def model(self):
        if self._model is None:
            from slmkit.model.hf import load_any

            self._model = load_any(self.model_path).float().eval()
        return self._model

    def batches(self):
        if self._batches is None:
            from slmkit.export.parity import gate_batches
            from slmkit.model.hf import tokenizer_dir_of
            from slmkit.model.tokenizer import load_tokenizer

            tok_dir = tokenizer_dir_of(self.model_path)
            tok = load_tokenizer(tok_dir) if tok_dir is not None else None
            cfg = self.model().cfg
            self._batches = gate_batches(self.model_path, tok, cfg.vocab_size, self.gate_text, cfg.max_seq_len)
        return self._batches

    def gate_source(self) -> dict:
        return dict(self.batches().source)

    def release(self) -> None:
        import gc

        self._model = None
        gc.collect()

    def build(self, spec: ArtifactSpec) -> dict[str, Any]:
        """{"status": "ok", path, bytes, parity} or {"status": "failed", error} — never raises for one artifact."""
        import time

        path = spec.path(self.dir, self.model_path)
        if spec.kind == "torch":
            return {"status": "ok", "path": str(path), "bytes": artifact_bytes(_weights(path)), "parity": None,
                    "note": "the source model in PyTorch fp32 (nothing exported)"}
        done = built(spec, path)
        if done is not None:
            done["reused"] = True
            return done
        t0 = time.time()
        self.say(f"exporting {spec.file_key} (parity gate on {self.batches().source['label']})")
        try:
            if spec.kind == "gguf":
                from slmkit.export.gguf import export_gguf

                export_gguf(self.model_path, path, spec.qtype, n_threads=self.threads, model=self.model(),
                            parity_batches=self.batches(), bounds=self.bounds.get(spec.file_key))
            else:
                from slmkit.export.onnx import export_onnx

                export_onnx(self.model_path, path, int8=spec.qtype == "int8", parity_batches=self.batches(),
                            bounds=self.bounds.get(spec.file_key))
        except SlmkitError as exc:
            report_path = parity_file(spec, path)
            sibling = path.parent / f"{path.name}.parity.json"  # ONNX writes the failed report beside the folder
            report = None
            for cand in (report_path, sibling):
                if cand is not None and cand.is_file():
                    try:
                        report = read_json(cand)
                    except SlmkitError:
                        pass
                    break
            return {"status": "failed", "stage": "export", "error": str(exc), "parity": trimmed_parity(report),
                    "seconds": round(time.time() - t0, 1)}
        record = built(spec, path) or {"status": "ok", "path": str(path), "bytes": artifact_bytes(path), "parity": None}
        record["seconds"] = round(time.time() - t0, 1)
        return record


def _weights(path: Path) -> Path:
    """The weight file(s) of a model folder (what a deployment ships), for its size."""
    from slmkit.evaluate.manifest import model_files

    files = model_files(path)
    return files[0] if len(files) == 1 else path
