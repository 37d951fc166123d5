"""Image batches: every public call takes a tensor or numpy image(s) and turns them into one layout.

One reader for pixel values, whatever the container: an integer image (uint8, uint16, any integer
dtype, numpy or torch) is scaled by its dtype's range, bool by 1, and a float image must already lie
in [0, 1]. A float photo in 0-255 is refused rather than guessed at: read as [0, 1] it would grade as
a saturated white eye, divided by 255 silently it would hide the same mistake elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a tensor is made or met, not to read a file's pixels
    import torch

__all__ = ["FLOAT_SLACK", "ImageValueError", "as_image_batch", "as_unit_float", "model_device", "unit_scale"]

FLOAT_SLACK = 1e-3
"""How far a float pixel may stray outside [0, 1] (interpolation overshoot, float error) before the
image is refused; what strays less is clipped."""


class ImageValueError(ValueError):
    """An image whose pixel values or layout the kit cannot read: ``name`` (the file, or the array's
    shape and dtype) and ``problem``, on one line."""

    def __init__(self, name: str, problem: str):
        self.name, self.problem = name, problem
        super().__init__(f"{name}: {problem}")


def _from_torch(obj) -> bool:
    """Whether ``obj`` is a torch object (a tensor, a dtype), told without importing torch: reading a
    fundus file (``data check``, ``read_image``) must not pay torch's import."""
    return type(obj).__module__.split(".")[0] == "torch"


def unit_scale(dtype) -> float | None:
    """What an image of ``dtype`` (numpy or torch) is divided by to lie in [0, 1]: the integer range's
    maximum, 1 for bool, None for floating point (already [0, 1], checked by :func:`as_unit_float`)."""
    if _from_torch(dtype):
        import torch

        if dtype == torch.bool:
            return 1.0
        if dtype.is_floating_point:
            return None
        if dtype.is_complex:
            raise ImageValueError(str(dtype), "unsupported pixel type")
        return float(torch.iinfo(dtype).max)
    dtype = np.dtype(dtype)
    if dtype == bool:
        return 1.0
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    if np.issubdtype(dtype, np.floating):
        return None
    raise ImageValueError(str(dtype), "unsupported pixel type")


def _describe(x) -> str:
    kind = "tensor" if _from_torch(x) else "array"
    return f"<{kind} {'x'.join(str(s) for s in x.shape)} {str(x.dtype).replace('torch.', '')}>"


def as_unit_float(x, name: str | None = None):
    """``x`` (a numpy array or a torch tensor of any shape) as float32 in [0, 1], the same container
    type: integers divided by their dtype's maximum, bool as 0/1, floats checked to lie in [0, 1]
    (within :data:`FLOAT_SLACK`, then clipped). Raises :class:`ImageValueError` naming ``name`` (or the
    array's shape and dtype) otherwise."""
    is_tensor = _from_torch(x)
    if not is_tensor:
        x = np.asarray(x)
    scale = unit_scale(x.dtype)
    if scale is not None:
        return x.detach().float().div(scale) if is_tensor else x.astype(np.float32) / np.float32(scale)
    out = x.detach().float() if is_tensor else x.astype(np.float32, copy=False)
    if out.numel() if is_tensor else out.size:
        if not (bool(out.isfinite().all()) if is_tensor else bool(np.isfinite(out).all())):
            raise ImageValueError(name or _describe(x), "pixel values must be finite (NaN or inf found)")
        lo, hi = float(out.min()), float(out.max())
        if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
            hint = " (a 0-255 image? pass it as uint8 or divide by 255)" if hi <= 255 + FLOAT_SLACK and hi > 1.5 else ""
            raise ImageValueError(name or _describe(x), f"float pixel values must lie in [0, 1], got {lo:.4g} to {hi:.4g}{hint}")
        if lo < 0 or hi > 1:
            out = out.clamp(0, 1) if is_tensor else np.clip(out, 0, 1)
    return out


def as_image_batch(images, name: str | None = None) -> torch.Tensor:
    """(B, 3, H, W) float32 tensor in [0, 1] from a torch tensor or a numpy array, (B, H, W, 3) or
    (B, 3, H, W), or one image without the batch axis; pixel values read by :func:`as_unit_float`
    (uint8, uint16, bool, float in [0, 1])."""
    import torch

    if not isinstance(images, torch.Tensor):
        images = np.asarray(images)
    x = as_unit_float(images, name)
    if not isinstance(x, torch.Tensor):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if x.ndim == 3:
        x = x[None]
    if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ImageValueError(name or _describe(images), f"images must be (B, 3, H, W) or (B, H, W, 3), got {tuple(images.shape)}")
    return x.contiguous()


def model_device(model) -> torch.device:
    """The device of ``model``'s parameters (CPU for None or a model without parameters)."""
    import torch

    if model is None:
        return torch.device("cpu")
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
