"""Image batches: every public call takes a tensor or numpy image(s) and turns them into one layout."""

from __future__ import annotations

import numpy as np
import torch


def as_image_batch(images) -> torch.Tensor:
    """(B, 3, H, W) float32 tensor from a tensor, or a numpy (B, H, W, 3) / (B, 3, H, W) batch
    (uint8 or float in [0, 1]); one image without the batch axis is accepted too."""
    if isinstance(images, torch.Tensor):
        x = images.detach().float()
    else:
        arr = np.asarray(images)
        arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim == 4 and arr.shape[-1] == 3 and arr.shape[1] != 3:
            arr = arr.transpose(0, 3, 1, 2)
        x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) or (B, H, W, 3), got {tuple(x.shape)}")
    return x


def model_device(model) -> torch.device:
    """The device of ``model``'s parameters (CPU for None or a model without parameters)."""
    if model is None:
        return torch.device("cpu")
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")

