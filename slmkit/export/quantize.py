"""GGUF quantization through llama.cpp's own quantizer (llama-cpp-python bindings), never re-implemented.

We write an f32 GGUF first and hand it to `llama_model_quantize` with llama.cpp's default parameters
and the requested ftype, so the file is byte-for-byte what `llama-quantize` would produce.
"""

from __future__ import annotations

import os
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.paths import atomic_file

# slmkit name -> llama_ftype constant name in llama_cpp (LLAMA_FTYPE_MOSTLY_<X>)
QUANT_TYPES: dict[str, str] = {
    "q8_0": "Q8_0",
    "q6_k": "Q6_K",
    "q5_k_m": "Q5_K_M", "q5_k_s": "Q5_K_S", "q5_0": "Q5_0", "q5_1": "Q5_1",
    "q4_k_m": "Q4_K_M", "q4_k_s": "Q4_K_S", "q4_0": "Q4_0", "q4_1": "Q4_1",
    "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS",
    "q3_k_m": "Q3_K_M", "q3_k_s": "Q3_K_S", "q3_k_l": "Q3_K_L",
    "q2_k": "Q2_K",
}


def ftype_of(qtype: str) -> int:
    """llama_ftype value for a quant name (SlmkitError naming the known ones)."""
    if qtype not in QUANT_TYPES:
        raise SlmkitError(f"gguf: unknown quantization type '{qtype}' (known: {', '.join(QUANT_TYPES)})")
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{QUANT_TYPES[qtype]}", None)
    if value is None:
        raise SlmkitError(f"gguf: this llama-cpp-python ({llama_cpp.__version__}) has no LLAMA_FTYPE_MOSTLY_{QUANT_TYPES[qtype]}")
    return int(value)


def quantize_gguf(src: str | Path, dst: str | Path, qtype: str, n_threads: int | None = None) -> Path:
    """Quantize an f32/f16 GGUF `src` into `dst` (atomic: temp file + rename) with llama.cpp."""
    try:
        import llama_cpp
    except ImportError:
        raise SlmkitError(f"gguf: type '{qtype}' needs llama-cpp-python (pip install 'slmkit[export]')") from None
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # llama.cpp logs every tensor at INFO; fallbacks show up in the export report instead
    ftype = ftype_of(qtype)
    dst = Path(dst)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = int(n_threads or os.cpu_count() or 1)
    from llama_cpp._utils import suppress_stdout_stderr

    with atomic_file(dst) as tmp:
        with suppress_stdout_stderr(disable=False):  # per-tensor fallback warnings; the report lists tensor types
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise SlmkitError(f"{src}: llama.cpp quantization to {qtype} failed (code {rc})")
    return dst
