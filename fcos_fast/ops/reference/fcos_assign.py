"""Reference FCOS assignment: a loop over box slots, vectorised over images and points.

Memory is O(B·P) for the running best match, never O(P·G).
"""

from __future__ import annotations

import torch


def fcos_assign(points: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                radius: torch.Tensor, gt_boxes: torch.Tensor,
                num_gt: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` index of the least-area matching box per point, ``-1`` for none."""
    num_images, num_slots = gt_boxes.shape[:2]
    x, y = points[:, 0], points[:, 1]
    best_area = torch.full((num_images, points.shape[0]), float("inf"),
                           dtype=points.dtype, device=points.device)
    matched = torch.full((num_images, points.shape[0]), -1, dtype=torch.int64,
                         device=points.device)
    for g in range(num_slots):
        box = gt_boxes[:, g, :, None]  # [B, 4, 1]: broadcasts against the P points
        x1, y1, x2, y2 = box[:, 0], box[:, 1], box[:, 2], box[:, 3]  # each [B, 1]
        center_x, center_y = (x1 + x2) / 2, (y1 + y2) / 2
        left, top, right, bottom = x - x1, y - y1, x2 - x, y2 - y  # each [B, P]
        nearest_side = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom))
        farthest_side = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))
        near_center = torch.maximum((x - center_x).abs(), (y - center_y).abs()) < radius
        area = (x2 - x1) * (y2 - y1)
        is_match = (
            near_center
            & (nearest_side > 0)
            & (farthest_side > lower)
            & (farthest_side < upper)
            & (g < num_gt)[:, None]
        )
        # Strictly smaller: on equal areas the lower box index, seen first, stays.
        better = is_match & (area < best_area)
        best_area = torch.where(better, area, best_area)
        matched = torch.where(better, torch.full_like(matched, g), matched)
    return matched
