"""The artifact vocabulary of `slmkit deploy --types`: what each name builds and which runtime runs it.

- `torch`: the model itself (slmkit checkpoint / HF folder) in PyTorch fp32 — nothing is exported;
- a GGUF type (`f32`, `f16`, `bf16`, `q8_0`, `q6_k`, `q5_k_m`, `q4_k_m`, `q4_0`, ...) run by llama.cpp;
  `TYPE:repack` runs the same file with llama.cpp's repacked CPU kernels (CPU_REPACK buffer, no AMX),
  `TYPE:norepack` with its extra buffers off (as `slmkit bench latency --gguf-types` spells them);
- `onnx-fp32`, `onnx-int8` (8-bit blockwise MatMulNBits) run by ONNX Runtime.

A bad entry is not fatal: it is reported in one line and the other artifacts go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ONNX_TYPES = ("onnx-fp32", "onnx-int8")
VARIANTS = ("repack", "norepack")
UNQUANTIZED = ("f32", "torch", "onnx-fp32")


@dataclass(frozen=True)
class ArtifactSpec:
    name: str  # as the user wrote it (lower case), e.g. "q4_0:repack"
    kind: str  # "torch" | "gguf" | "onnx"
    qtype: str  # "f32", "q4_k_m", "int8", "fp32"
    variant: str = ""  # "", "repack", "norepack" (llama.cpp weight placement)

    @property
    def backend(self) -> str:
        return {"torch": "torch", "gguf": "llama.cpp", "onnx": "onnxruntime"}[self.kind]

    @property
    def quantized(self) -> bool:
        return self.name.partition(":")[0] not in UNQUANTIZED

    @property
    def file_key(self) -> str:
        """Artifacts that share one exported file (q4_0 and q4_0:repack) share this key."""
        return self.name.partition(":")[0]

    def path(self, artifacts_dir: Path, model: Path) -> Path:
        if self.kind == "torch":
            return model
        if self.kind == "gguf":
            return artifacts_dir / f"model-{self.qtype}.gguf"
        return artifacts_dir / self.file_key

    @property
    def llama_options(self) -> dict:
        """Options of the latency bench's llama.cpp jobs for this variant."""
        if self.variant == "repack":
            return {"extra_bufts": False, "repack_only": True}
        if self.variant == "norepack":
            return {"extra_bufts": False}
        return {}


def known_types() -> list[str]:
    from slmkit.export.gguf import DIRECT_TYPES
    from slmkit.export.quantize import QUANT_TYPES

    return ["torch", *DIRECT_TYPES, *QUANT_TYPES, *ONNX_TYPES]


def parse_type(text: str) -> ArtifactSpec:
    """One --types entry; ValueError with a one-line reason when it names nothing we can build."""
    from slmkit.export.gguf import DIRECT_TYPES
    from slmkit.export.quantize import QUANT_TYPES

    name = text.strip().lower()
    base, _, variant = name.partition(":")
    if base in ("torch",) and not variant:
        return ArtifactSpec(name, "torch", "f32")
    if base in ONNX_TYPES and not variant:
        return ArtifactSpec(name, "onnx", base.split("-", 1)[1])
    if base in DIRECT_TYPES or base in QUANT_TYPES:
        if variant and variant not in VARIANTS:
            raise ValueError(f"'{text}': unknown variant ':{variant}' (known: {', '.join(':' + v for v in VARIANTS)})")
        return ArtifactSpec(name, "gguf", base, variant)
    if variant and (base in ONNX_TYPES or base == "torch"):
        raise ValueError(f"'{text}': variants (:repack, :norepack) apply to GGUF types only")
    raise ValueError(f"'{text}': unknown type (known: {', '.join(known_types())}; GGUF types take :repack / :norepack)")


def parse_types(text: str | list[str]) -> tuple[list[ArtifactSpec], list[str]]:
    """(specs in order without duplicates, one failure line per bad entry)."""
    items = [t for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    specs: list[ArtifactSpec] = []
    bad: list[str] = []
    for item in items:
        try:
            spec = parse_type(item)
        except ValueError as exc:
            bad.append(f"--types {exc}")
            continue
        if spec.name not in [s.name for s in specs]:
            specs.append(spec)
    return specs, bad


def default_reference(specs: list[ArtifactSpec]) -> str | None:
    """The unquantized artifact to compare against: f32 GGUF, else torch, else ONNX fp32, else the first."""
    names = [s.name for s in specs]
    for cand in UNQUANTIZED:
        if cand in names:
            return cand
    return names[0] if names else None
