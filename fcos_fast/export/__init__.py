"""The whole detector as one fixed-size graph: ``torch.compile``, ``torch.export``, ONNX.

``StaticFCOS(model)`` wraps a trained ``FCOS`` into a module whose inputs and outputs
have fixed shapes and whose forward never synchronises with the host: normalisation,
padding, backbone, head and the post-processing of ``postprocess_detections_padded``
(the fixed-size ops ``ops.per_class_topk_padded`` and ``ops.batched_nms_padded``). So
``torch.compile(static, fullgraph=True)`` takes it whole (and captures it in a CUDA graph
with ``mode="reduce-overhead"``), ``torch.export.export(static, (images,))`` exports it,
and ``fcos_fast.export.onnx`` translates the export to standard ONNX operators.

``python -m fcos_fast.export --checkpoint C --out model.pt2`` does this for a training
checkpoint (``fcos_fast/export/__main__.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fcos_fast.model.fcos import FCOS
from fcos_fast.model.points import make_points
from fcos_fast.model.postprocess import PaddedDetections, postprocess_detections_padded

__all__ = ["StaticFCOS", "PaddedDetections", "model_input_size"]


class StaticFCOS(nn.Module):
    """A trained ``FCOS`` as a fixed-size, sync-free inference module.

    ``forward(images)`` takes ``[B, 3, H, W]`` float images in ``[0, 1]``, all of one size
    and already at the model's input size (the size ``FCOS``'s transform would resize
    them to; ``model_input_size``), and returns ``PaddedDetections``, a named tuple
    ``(boxes [B, D, 4], scores [B, D], labels [B, D], num_detections [B])`` in the
    coordinates of ``images``: row ``i < num_detections[b]`` is detection ``i`` of
    ``model(list(images))[b]`` (the same candidates, thresholds, NMS and order; boxes
    and scores float32), the other rows are padding (zero boxes and scores, label -1).

    It does not resize: a fixed-size graph is built for one input size. Images of another
    size run too, as the network input (the dynamic model would resize them first).
    Inference only (no autograd graph). The shapes of the outputs follow from the input
    shape alone; under ``torch.export`` the batch size is static (one program per batch
    size).

    Args:
        model: a trained ``FCOS`` (its backbone and head are shared, not copied; its
            thresholds, candidate scheme, ``topk_candidates`` and ``backend`` are read
            now).
        detections_per_img: ``D``; default the model's ``detections_per_img``.
    """

    def __init__(self, model: FCOS, detections_per_img: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, FCOS):
            raise TypeError(f"StaticFCOS needs an fcos_fast FCOS, got {type(model).__name__}")
        self.backbone = model.backbone
        self.head = model.head
        self.strides = model.strides
        # Buffers, not tensors made in forward: a tensor from a Python list on the GPU is
        # a host-to-device copy that synchronises. float64, so that the cast to the
        # images' dtype rounds as torchvision's as_tensor(image_mean, dtype) does.
        device = next(model.parameters()).device
        for name, values in (("image_mean", model.transform.image_mean),
                             ("image_std", model.transform.image_std)):
            self.register_buffer(name, torch.tensor([float(v) for v in values],
                                                    dtype=torch.float64,
                                                    device=device)[:, None, None],
                                 persistent=False)
        self.size_divisible = int(model.transform.size_divisible)
        self.score_thresh = float(model.score_thresh)
        self.nms_thresh = float(model.nms_thresh)
        self.topk_candidates = int(model.topk_candidates)
        self.detections_per_img = int(model.detections_per_img if detections_per_img is None
                                      else detections_per_img)
        if self.detections_per_img < 1:
            raise ValueError(f"detections_per_img must be at least 1, got "
                             f"{self.detections_per_img}")
        self.candidates = model.candidates
        self.backend = model.backend
        self.train(False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
        with torch.no_grad():
            # A plain tuple: what torch.export serialises and ONNX names without a
            # registered pytree type.
            return tuple(self._detect(images))

    def _detect(self, images: Tensor) -> PaddedDetections:
        height, width = images.shape[-2:]
        # torchvision's GeneralizedRCNNTransform.normalize, for the whole batch.
        batch = ((images - self.image_mean.to(images.dtype))
                 / self.image_std.to(images.dtype))
        # Zero padding to a multiple of size_divisible at the right and bottom, as
        # batch_images does.
        padded_h = math.ceil(height / self.size_divisible) * self.size_divisible
        padded_w = math.ceil(width / self.size_divisible) * self.size_divisible
        if (padded_h, padded_w) != (height, width):
            batch = nn.functional.pad(batch, (0, padded_w - width, 0, padded_h - height))

        features = self.backbone(batch)
        features = list(features.values()) if isinstance(features, dict) else list(features)
        outputs = self.head(features)
        points = make_points([tuple(level.shape[-2:]) for level in features],
                             (padded_h, padded_w), self.strides, device=batch.device)
        return postprocess_detections_padded(
            outputs, points, (height, width), score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh, topk_candidates=self.topk_candidates,
            detections_per_img=self.detections_per_img, candidates=self.candidates,
            backend=self.backend)


def model_input_size(model: FCOS, height: int, width: int) -> tuple[int, int]:
    """``(H, W)`` that ``model``'s evaluation transform resizes an ``height x width`` image
    to (shorter side to ``min_size``, longer side at most ``max_size``, torchvision's
    rounding): the size to give ``StaticFCOS`` images of that shape.
    """
    transform = model.transform
    if transform.fixed_size is not None:
        return int(transform.fixed_size[1]), int(transform.fixed_size[0])
    scale = min(transform.min_size[-1] / min(height, width),
                transform.max_size / max(height, width))
    # interpolate(scale_factor=..., recompute_scale_factor=True): floor(size * scale).
    return int(math.floor(height * scale)), int(math.floor(width * scale))
