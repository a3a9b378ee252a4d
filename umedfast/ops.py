"""Box-overlap ops: the one façade over the compiled ``torch.ops.umedfast.*`` (built from csrc/ as ``umedfast._C``).

Boxes are ``Tensor[N, 4]`` in xyxy order, float16 / bfloat16 / float32 / float64, on CPU or CUDA.

- ``box_iou(a[N,4], b[N,4]) -> Tensor[N]``: IoU of ``a[i]`` with ``b[i]`` (paired).
- ``box_iou_pairwise(a[N,4], b[M,4]) -> Tensor[N, M]``: IoU of every ``a[i]`` with every ``b[j]``.
- ``generalized_box_iou(a[N,4], b[N,4]) -> Tensor[N]``: paired GIoU in ``[-1, 1]``.

Semantics shared by the compiled kernels and the pure-torch fallback:

- Output dtype is always **float32** (also for float16/bfloat16/float64 boxes); arithmetic is float32, or float64 for
  float64 boxes. Outputs carry no gradient (these ops score boxes; they are not a loss).
- A box with ``x2 <= x1`` or ``y2 <= y1`` (empty or inverted) has area 0: its IoU with anything is 0, never NaN.
- A pair with any NaN/inf coordinate gets the bottom of the range: IoU 0, GIoU -1 (so a garbage box never scores
  better than a real miss).
- GIoU = IoU - (C - U) / C with C the area of the smallest box enclosing both (from the raw corners) and U the
  union; when C == 0 (both boxes degenerate on one line) GIoU = IoU = 0.
- Each axis is rescaled by an exact power of two before areas are formed, so coordinates from ~1e-30 to ~1e38 keep
  full float32 accuracy (plain ``(x2-x1)*(y2-y1)`` overflows above ~1e19).
- Wrong shapes, dtypes or devices raise ``RuntimeError`` with the same message from both paths, before any work.

When ``umedfast._C`` is missing (or for a device it was not built for) the same formula runs in plain torch, with one
warning. ``UMEDFAST_DISABLE_COMPILED_OPS=1`` forces the fallback (tests use it).
"""
from __future__ import annotations

import os
import warnings

import torch

__all__ = ["has_compiled_ops", "build_info", "cpu_kernel_variant", "cpu_kernel_variants", "box_iou", "box_iou_pairwise",
           "generalized_box_iou"]

_C = None
_C_MISSING_REASON: str | None = None
if os.environ.get("UMEDFAST_DISABLE_COMPILED_OPS", "0") == "1":
    _C_MISSING_REASON = "UMEDFAST_DISABLE_COMPILED_OPS=1"
else:
    try:
        from umedfast import _C  # noqa: F811  (importing it registers torch.ops.umedfast.*)
    except ImportError as err:
        _C_MISSING_REASON = f"import failed: {err}"

_BUILD_INFO: dict = dict(_C.build_info()) if _C is not None else {"cuda": False, "cuda_archs": ""}
_warned_fallback = False

# c10 spellings of dtypes, so fallback messages match TORCH_CHECK's word for word.
_C10_DTYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}
_BOX_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def has_compiled_ops() -> bool:
    """True when ``umedfast._C`` loaded and registered ``torch.ops.umedfast.*``."""
    return _C is not None


def build_info() -> dict:
    """How ``umedfast._C`` was built: ``{'compiled', 'cuda', 'cuda_archs', 'torch_version', ...}``."""
    info = dict(_BUILD_INFO)
    info["compiled"] = _C is not None
    if _C is None:
        info["reason"] = _C_MISSING_REASON
    return info


def cpu_kernel_variant(force: str | None = None) -> str:
    """SIMD variant the compiled CPU box ops run: ``'avx512'``, ``'avx2'`` or ``'baseline'`` (x86-64 SSE2) on x86-64,
    ``'neon'`` / ``'generic'`` elsewhere, ``'fallback'`` without ``_C``. ``force`` switches to a variant listed by
    :func:`cpu_kernel_variants` (``'auto'`` = the best this CPU has; ``RuntimeError`` for one it cannot run).
    The env var ``UMEDFAST_CPU_ISA`` sets the starting variant (capped at what the CPU supports)."""
    if _C is None or not hasattr(torch.ops.umedfast, "cpu_kernel_isa"):
        if force not in (None, "auto", "fallback"):
            raise RuntimeError(f"umedfast.cpu_kernel_variant: no compiled CPU kernels to switch to {force!r}")
        return "fallback"
    return torch.ops.umedfast.cpu_kernel_isa(force or "")


def cpu_kernel_variants() -> list[str]:
    """Variants :func:`cpu_kernel_variant` can switch to on this CPU, worst to best (``[]`` without ``_C``)."""
    if _C is None or not hasattr(torch.ops.umedfast, "cpu_kernel_isas"):
        return []
    return list(torch.ops.umedfast.cpu_kernel_isas())


# --------------------------------------------------------------------------------------------------- input checks
def _shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _check_boxes(op: str, name: str, t: torch.Tensor) -> None:
    if t.dim() != 2 or t.shape[1] != 4:
        raise RuntimeError(f"umedfast.{op}: {name} must have shape [N, 4] (x1, y1, x2, y2), got {_shape_str(t)}")
    if t.dtype not in _BOX_DTYPES:
        raise RuntimeError(f"umedfast.{op}: {name} must be float16, bfloat16, float32 or float64, got "
                           f"{_C10_DTYPE_NAMES.get(t.dtype, str(t.dtype))}")


def _check_pair(op: str, a: torch.Tensor, b: torch.Tensor, paired: bool) -> None:
    """Mirror of csrc/box_iou_checks.h (same order, same words)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"umedfast.{op}: a and b must be tensors, got {type(a).__name__} and {type(b).__name__}")
    _check_boxes(op, "a", a)
    _check_boxes(op, "b", b)
    if a.dtype != b.dtype:
        raise RuntimeError(f"umedfast.{op}: a and b must have the same dtype, got "
                           f"{_C10_DTYPE_NAMES[a.dtype]} and {_C10_DTYPE_NAMES[b.dtype]}")
    if a.device != b.device:
        raise RuntimeError(f"umedfast.{op}: a and b must be on the same device, got {a.device} and {b.device}")
    if paired:
        torch._check(a.shape[0] == b.shape[0], lambda: (
            f"umedfast.{op}: paired boxes need as many rows in a as in b, got {a.shape[0]} and {b.shape[0]}"))


# ------------------------------------------------------------------------------------------ pure-torch fallback
def _pow2_recip(span: torch.Tensor) -> torch.Tensor:
    """Exact power of two 2^-e with span in [2^e, 2^(e+1)), exponent clamped like csrc/box_iou_math.h."""
    _, exp = torch.frexp(span)  # span = m * 2^exp, |m| in [0.5, 1)
    if span.dtype == torch.float64:
        e = (exp.to(torch.int64) - 1).clamp(-1022, 1022)
        return ((1023 - e) << 52).view(torch.float64)
    e = (exp - 1).clamp(-126, 126)
    return ((127 - e) << 23).view(torch.float32)


def _overlap_torch(a: torch.Tensor, b: torch.Tensor, giou: bool) -> torch.Tensor:
    """The csrc/box_iou_math.h formula in torch ops; a and b broadcast (paired [N,4] or [N,1,4] x [1,M,4])."""
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    a, b = a.to(acc), b.to(acc)
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    finite = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    span_x = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    span_y = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    sx, sy = _pow2_recip(span_x), _pow2_recip(span_y)
    aw, ah = (ax2 - ax1).clamp(min=0) * sx, (ay2 - ay1).clamp(min=0) * sy
    bw, bh = (bx2 - bx1).clamp(min=0) * sx, (by2 - by1).clamp(min=0) * sy
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0) * sx
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0) * sy
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    iou = inter / torch.where(union > 0, union, 1.0)
    iou = torch.where(iou > 0, torch.where(iou < 1, iou, 1.0), 0.0)  # NaN -> 0
    if not giou:
        return torch.where(finite, iou, 0.0).float()
    c = span_x.clamp(min=0) * sx * (span_y.clamp(min=0) * sy)
    g = torch.where(c > 0, iou - (c - union) / torch.where(c > 0, c, 1.0), iou)
    g = torch.where(g > -1, torch.where(g < 1, g, 1.0), -1.0)  # NaN -> -1
    return torch.where(finite, g, -1.0).float()


def _warn_fallback(device: torch.device) -> None:
    global _warned_fallback
    if _warned_fallback:
        return
    _warned_fallback = True
    if _C is None:
        why = f"umedfast._C is not available ({_C_MISSING_REASON}); rebuild with `pip install -e . --no-build-isolation`"
    else:
        why = f"umedfast._C was not built for {device.type} tensors (build_info: {_BUILD_INFO})"
    warnings.warn(f"umedfast.ops: {why}. Using the pure-torch fallback (same results, slower).", RuntimeWarning,
                  stacklevel=3)


def _use_compiled(a, b) -> bool:
    if _C is None or not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.device != b.device:
        return False  # mixed devices: the fallback's checks raise the readable message
    kind = a.device.type
    if kind in ("cpu", "meta") or (kind == "cuda" and _BUILD_INFO.get("cuda")):
        return True
    _warn_fallback(a.device)
    return False


def _fallback(op: str, a, b, paired: bool, giou: bool) -> torch.Tensor:
    _check_pair(op, a, b, paired)
    _warn_fallback(a.device)
    with torch.no_grad():
        if paired:
            return _overlap_torch(a, b, giou)
        return _overlap_torch(a[:, None, :], b[None, :, :], giou)


# ------------------------------------------------------------------------------------------------- public API
def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Paired IoU. ``a``, ``b``: ``Tensor[N, 4]`` xyxy, same dtype and device. Returns float32 ``Tensor[N]``."""
    if _use_compiled(a, b):
        return torch.ops.umedfast.box_iou(a.detach(), b.detach())
    return _fallback("box_iou", a, b, paired=True, giou=False)


def box_iou_pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All-pairs IoU. ``a``: ``Tensor[N, 4]``, ``b``: ``Tensor[M, 4]``. Returns float32 ``Tensor[N, M]``."""
    if _use_compiled(a, b):
        return torch.ops.umedfast.box_iou_pairwise(a.detach(), b.detach())
    return _fallback("box_iou_pairwise", a, b, paired=False, giou=False)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Paired GIoU in [-1, 1] (-1 for pairs with NaN/inf). ``a``, ``b``: ``Tensor[N, 4]``. Returns float32 ``[N]``."""
    if _use_compiled(a, b):
        return torch.ops.umedfast.generalized_box_iou(a.detach(), b.detach())
    return _fallback("generalized_box_iou", a, b, paired=True, giou=True)


# ------------------------------------------------------------------------ fake (meta) kernels for torch.compile
if _C is not None:

    @torch.library.register_fake("umedfast::box_iou")
    def _box_iou_fake(a, b):
        _check_pair("box_iou", a, b, paired=True)
        return a.new_empty((a.shape[0],), dtype=torch.float32)

    @torch.library.register_fake("umedfast::generalized_box_iou")
    def _generalized_box_iou_fake(a, b):
        _check_pair("generalized_box_iou", a, b, paired=True)
        return a.new_empty((a.shape[0],), dtype=torch.float32)

    @torch.library.register_fake("umedfast::box_iou_pairwise")
    def _box_iou_pairwise_fake(a, b):
        _check_pair("box_iou_pairwise", a, b, paired=False)
        return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.float32)
