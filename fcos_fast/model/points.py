"""The FCOS point grid and its box coding.

FCOS predicts, for every location of every pyramid level, the distances ``(l, t, r, b)``
from that location to the four sides of a box. This module makes those locations
("points") and converts between distances and boxes. All coordinates are ``(x, y)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Points(NamedTuple):
    """The locations of all pyramid levels of one batch, concatenated level by level.

    Attributes:
        xy: ``[P, 2]`` point coordinates ``(x, y)`` in the (resized, padded) input image.
        stride: ``[P]`` nominal stride of each point's level (8, 16, ..., 128): the unit of
            the regression targets, of the scale ranges and of the center-sampling radius.
        num_per_level: number of points of each level, ``sum(num_per_level) == P``.
        scale_lower, scale_upper: ``[P]`` the box sizes each point's level is responsible
            for (``scale_ranges``).
        xyxy: ``[P, 4]`` each point twice, ``(x, y, x, y)``, and
        signed_stride: ``[P, 4]`` ``(-s, -s, s, s)``: ``decode`` in two operators.
    """

    xy: Tensor
    stride: Tensor
    num_per_level: list[int]
    scale_lower: Tensor
    scale_upper: Tensor
    xyxy: Tensor
    signed_stride: Tensor

    def decode(self, distances: Tensor) -> Tensor:
        """``decode_boxes(self.xy, self.stride, distances)`` for distances ``[..., P, 4]``,
        bitwise: ``x + l * (-s)`` is ``x - l * s`` exactly (negation is exact, and so is
        adding a negated number), in 2 operators instead of 7 (the losses and the
        post-processing count theirs, tests/model/test_operator_counts.py)."""
        xyxy, signed_stride = self.xyxy, self.signed_stride
        if xyxy.dtype != distances.dtype:
            xyxy, signed_stride = xyxy.to(distances.dtype), signed_stride.to(distances.dtype)
        return xyxy + distances * signed_stride

    def centerness(self, boxes: Tensor) -> Tensor:
        """``centerness_targets(self.xy, boxes)`` for boxes ``[..., P, 4]`` that contain
        their points, bitwise (``|x - x1|`` is ``x - x1`` there, and ``|x - x2|`` is
        ``x2 - x``), in 7 operators instead of 9. Not for points outside their box."""
        sides = (self.xyxy - boxes).abs().unflatten(-1, (2, 2))  # ((l, t), (r, b))
        shorter, longer = torch.aminmax(sides, dim=-2)
        return torch.sqrt((shorter / longer).prod(dim=-1))

    def scale_ranges(self) -> tuple[Tensor, Tensor]:
        """``(lower, upper)``, each ``[P]``: the box sizes each level is responsible for.

        A point matches a box only if ``lower < max(l, t, r, b) < upper``. Level ``i``
        takes ``(4 * stride_i, 8 * stride_i)``, widened to 0 below on the first level and
        to infinity above on the last, so every box size has a level (FCOS paper, 3.2;
        the same bounds as torchvision's ``FCOS.compute_loss``). Made with the grid, so
        that the losses dispatch nothing for them.
        """
        return self.scale_lower, self.scale_upper


def make_points(feature_shapes: list[tuple[int, int]], image_shape: tuple[int, int],
                strides: list[int], *, device: torch.device,
                dtype: torch.dtype = torch.float32) -> Points:
    """The points of every pyramid level, for a batch padded to ``image_shape``.

    Point ``(i, j)`` of a level lies at ``(j * step_x, i * step_y)`` where the step is
    ``image_shape // feature_shape`` per axis. This is exactly what torchvision's
    ``AnchorGenerator`` produces for FCOS (anchor centers, no half-step offset), and the
    step equals the nominal stride except on P6/P7 when the padded size is not a multiple
    of 128 (the ceil of the stride-2 convolutions then makes the grid a little coarser).

    Args:
        feature_shapes: ``(H_l, W_l)`` of each level.
        image_shape: ``(H, W)`` of the padded batch tensor fed to the backbone.
        strides: nominal stride of each level, e.g. ``(8, 16, 32, 64, 128)``.

    Returns:
        ``Points`` with ``P = sum(H_l * W_l)`` points, row-major within a level (the
        order of the head's flattened outputs).
    """
    if len(feature_shapes) != len(strides):
        raise ValueError(
            f"got {len(feature_shapes)} feature maps but {len(strides)} strides; "
            "the backbone must return one feature map per stride"
        )
    image_h, image_w = image_shape
    xy, stride, scale_lower, scale_upper = [], [], [], []
    last = len(strides) - 1
    for level, ((height, width), level_stride) in enumerate(zip(feature_shapes, strides)):
        step_y, step_x = image_h // height, image_w // width
        ys = torch.arange(height, device=device, dtype=dtype) * step_y
        xs = torch.arange(width, device=device, dtype=dtype) * step_x
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        xy.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1))
        # Filled on the device (no host-to-device copy, which would synchronise).
        for values, value in ((stride, float(level_stride)),
                              (scale_lower, 0.0 if level == 0 else 4.0 * level_stride),
                              (scale_upper, float("inf") if level == last
                               else 8.0 * level_stride)):
            values.append(torch.full((height * width,), value, device=device, dtype=dtype))
    xy, stride = torch.cat(xy), torch.cat(stride)
    return Points(xy, stride, [h * w for h, w in feature_shapes],
                  torch.cat(scale_lower), torch.cat(scale_upper), torch.cat((xy, xy), dim=1),
                  torch.stack((-stride, -stride, stride, stride), dim=1))


def decode_boxes(xy: Tensor, stride: Tensor, distances: Tensor) -> Tensor:
    """Boxes from predicted distances.

    Args:
        xy: ``[..., 2]`` points ``(x, y)``.
        stride: ``[...]`` stride of each point; the distances are in units of it.
        distances: ``[..., 4]`` predicted ``(l, t, r, b)`` divided by the stride.

    Returns:
        ``[..., 4]`` boxes ``(x1, y1, x2, y2) = (x - l*s, y - t*s, x + r*s, y + b*s)``
        (torchvision's ``BoxLinearCoder(normalize_by_size=True).decode``).
    """
    scaled = distances * stride[..., None]
    if xy.dtype != distances.dtype:
        xy = xy.to(distances.dtype)
    # Whole (x, y) pairs at a time: 4 operators that launch work, not 6 (the loss and
    # post-processing count theirs, tests/model/test_operator_counts.py).
    return torch.cat((xy - scaled[..., :2], xy + scaled[..., 2:]), dim=-1)


def centerness_targets(xy: Tensor, boxes: Tensor) -> Tensor:
    """The centerness of each point within its box (FCOS paper, eq. 3).

    Args:
        xy: ``[..., 2]`` points ``(x, y)`` inside their ``boxes``.
        boxes: ``[..., 4]`` boxes ``(x1, y1, x2, y2)``.

    Returns:
        ``[...]`` ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` in ``[0, 1]``.
    """
    # [..., 2, 2]: ((left, top), (right, bottom)); min and max over the pair of sides of
    # each axis at once.
    sides = torch.stack((xy - boxes[..., :2], boxes[..., 2:] - xy), dim=-2)
    shorter, longer = torch.aminmax(sides, dim=-2)
    return torch.sqrt((shorter / longer).prod(dim=-1))
