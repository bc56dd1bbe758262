"""llama.cpp weight placement for the bench: the CPU_REPACK buffer without AMX.

Why: llama.cpp repacks q4_0 / q4_K / iq4_nl weights into interleaved layouts (q4_0_8x8 ...) for AVX2/AVX512
through its "extra buffer types", but the same switch (`use_extra_bufts`) also enables the AMX buffer,
which it prefers when the CPU advertises AMX — and on VMs that advertise AMX without supporting it that
crashes. Here we turn extra buffers off and put exactly the repackable block weights into CPU_REPACK
with `tensor_buft_overrides`, so the repacked kernels can be measured on such machines too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
from typing import Iterator

REPACKABLE = {"Q4_0", "Q4_K", "IQ4_NL"}  # types with AVX2/AVX512 repack kernels in llama.cpp's CPU backend
_KEEP: list = []  # override arrays must outlive model loading


class _Override(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def cpu_extra_bufts() -> dict[str, int]:
    """Name → ggml_backend_buffer_type_t of the CPU backend's extra buffer types (e.g. AMX, CPU_REPACK)."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    ggml = ctypes.CDLL(os.path.join(libdir, "libggml.so"))
    base = ctypes.CDLL(os.path.join(libdir, "libggml-base.so"))
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    base.ggml_backend_buft_name.restype = ctypes.c_char_p
    base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    lib.llama_backend_init()
    dev = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not dev:
        return {}
    reg = ggml.ggml_backend_dev_backend_reg(dev)
    fn = base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not fn:
        return {}
    arr = ctypes.cast(ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(fn)(dev), ctypes.POINTER(ctypes.c_void_p))
    out, i = {}, 0
    while arr and arr[i]:
        out[base.ggml_backend_buft_name(arr[i]).decode()] = arr[i]
        i += 1
    return out


def repackable_tensors(path: str) -> list[str]:
    """2-D weights of a GGUF whose type has a CPU repack kernel (others would crash the repack buffer)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return [t.name for t in reader.tensors
            if t.tensor_type.name in REPACKABLE and len(t.shape) == 2 and t.name.startswith("blk.")]


@contextlib.contextmanager
def repack_only(path: str) -> Iterator[int]:
    """While active, llama_model_default_params() asks for: no extra buffers, repackable weights in CPU_REPACK.

    Yields the number of tensors placed there. Raises RuntimeError when this llama.cpp has no CPU_REPACK.
    """
    from slmkit.serve.llamacpp_backend import model_params

    bufts = cpu_extra_bufts()
    if "CPU_REPACK" not in bufts:
        raise RuntimeError(f"this llama.cpp has no CPU_REPACK buffer type (extra buffers: {sorted(bufts)})")
    names = repackable_tensors(path)
    arr = (_Override * (len(names) + 1))()
    patterns = [f"^{re.escape(n)}$".encode() for n in names]
    for i, pat in enumerate(patterns):
        arr[i].pattern = pat
        arr[i].buft = bufts["CPU_REPACK"]
    arr[len(names)].pattern = None
    arr[len(names)].buft = None
    _KEEP.append((arr, patterns))
    with model_params(use_extra_bufts=False, tensor_buft_overrides=ctypes.cast(arr, ctypes.c_void_p).value):
        yield len(names)
