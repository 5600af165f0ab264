"""Torch tensors <-> the host bytes the Rust core reads and writes (no libtorch on that side)."""

from __future__ import annotations

import numpy as np
import torch

# safetensors' dtype names, as the service's files spell them.
_SAFETENSORS = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("complex64", "C64")):
    if hasattr(torch, _name):
        _SAFETENSORS[getattr(torch, _name)] = _code
_TORCH = {code: dtype for dtype, code in _SAFETENSORS.items()}


def f32_bytes(t: torch.Tensor) -> bytes:
    """The values as the engine ranks them: converted to f32 on the CPU (libtorch's own
    conversion, as the engine's `to_kind(Float)`), row-major, little-endian."""
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes()


def bool_tensor(mask: bytes, shape, device) -> torch.Tensor:
    """One byte per element (1 = kept) as a bool tensor of `shape` on `device`."""
    array = np.frombuffer(mask, dtype=np.bool_).copy()
    return torch.from_numpy(array).reshape(tuple(shape)).to(device)


def safetensors_dtype(name: str, t: torch.Tensor) -> str:
    try:
        return _SAFETENSORS[t.dtype]
    except KeyError:
        raise ValueError(f"tensor `{name}`: dtype {t.dtype} has no safetensors form the service writes") from None


def raw_bytes(t: torch.Tensor) -> bytes:
    """A tensor's own bytes (any dtype), row-major, as safetensors stores them."""
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def from_raw(dtype: str, shape, data: bytes) -> torch.Tensor:
    torch_dtype = _TORCH.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"dtype {dtype} has no torch form here")
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return flat.view(torch_dtype).reshape(tuple(shape)).clone()
