"""Prepacked oneDNN weights for bf16 linear layers on the CPU.

A ``nn.Linear`` in eager PyTorch hands its ``(out, in)`` weight to oneDNN on every call, which
re-lays it out into the blocked format its bf16 kernels read before multiplying. At decode-sized
inputs (a few rows) that reorder costs as much as the product itself. oneDNN can keep the weight in
the blocked format (``torch.ops.mkldnn._reorder_linear_weight``, the same op the inductor
compiler's weight freezing emits); ``torch.ops.mkldnn._linear_pointwise`` then computes
``y = x W^T + b`` with the same kernels, bit for bit the result of ``F.linear``, 1.2-3x faster for
1-64 rows on an AVX-512-BF16 CPU.

:func:`packed_linears` swaps the forward of every bf16 CPU ``nn.Linear`` of a model for the packed
product inside a ``with`` block (no-grad calls only; a call that needs gradients runs the original
forward). Packed copies are cached per module and rebuilt when the weight changes in place (tracked
by its version counter). Module hooks still fire: only ``forward`` is replaced, not ``__call__``.
"""

from __future__ import annotations

import contextlib
import functools
import types
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PACK_ROWS = 16  # the row count oneDNN tunes the blocked layout for; any row count computes correctly


@functools.cache
def _cpu_bf16() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def packing_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether prepacked oneDNN bf16 weights are available for this device and dtype."""
    return device.type == "cpu" and dtype == torch.bfloat16 and _cpu_bf16()


_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[int, int, torch.Tensor]] = weakref.WeakKeyDictionary()


def packed_weight(module: nn.Linear) -> torch.Tensor:
    """The module's weight in oneDNN's blocked layout (cached; rebuilt if the weight changed)."""
    w = module.weight
    key = (w.data_ptr(), w._version)
    hit = _PACKED.get(module)
    if hit is not None and hit[:2] == key:
        return hit[2]
    packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS)
    _PACKED[module] = (*key, packed)
    return packed


def linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with prepacked weights where supported (no-grad bf16 on the CPU), else ``F.linear``."""
    w = module.weight
    if torch.is_grad_enabled() or x.dtype != torch.bfloat16 or not packing_supported(w.device, w.dtype):
        return F.linear(x, w, module.bias)
    b = None if module.bias is None else module.bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight(module), b, "none", [None], "")


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(self, x)


@contextlib.contextmanager
def packed_linears(model: nn.Module) -> Iterator[int]:
    """Inside the block, every bf16 CPU ``nn.Linear`` of ``model`` multiplies with prepacked weights.

    Yields the number of layers swapped (0 where packing is unsupported: nothing changes then).
    """
    swapped: list[nn.Linear] = []
    try:
        for m in model.modules():
            if (
                type(m) is nn.Linear
                and "forward" not in m.__dict__
                and packing_supported(m.weight.device, m.weight.dtype)
            ):
                packed_weight(m)
                m.forward = types.MethodType(_packed_forward, m)  # type: ignore[method-assign]
                swapped.append(m)
        yield len(swapped)
    finally:
        for m in swapped:
            del m.forward


def unpack(model: Any) -> None:
    """Drop the cached packed copies of ``model``'s layers (frees their memory)."""
    for m in model.modules():
        _PACKED.pop(m, None)
