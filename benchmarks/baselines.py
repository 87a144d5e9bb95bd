"""The code each fused op replaces, run as the benchmark baseline and in parity tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torchvision


def torchvision_fcos_matching(points: torch.Tensor, strides: torch.Tensor,
                              counts: list[int], boxes_per_image: list[torch.Tensor],
                              radius_factor: float = 1.5) -> torch.Tensor:
    """``[B, P]`` matches from torchvision's own ``FCOS.compute_loss`` matching code.

    torchvision's anchors are boxes of side ``stride`` centred on the points; its head
    loss is replaced by a function that captures ``matched_idxs``, so what runs is
    exactly torchvision's P×G matching.
    """
    half = strides[:, None] / 2
    anchors = torch.cat([points - half, points + half], dim=1)
    captured = {}

    def capture(targets, head_outputs, anchors, matched_idxs):
        captured["matched"] = matched_idxs
        return {}

    fake_fcos = SimpleNamespace(center_sampling_radius=radius_factor,
                                head=SimpleNamespace(compute_loss=capture))
    targets = [{"boxes": b, "labels": torch.zeros(b.shape[0], dtype=torch.int64,
                                                  device=b.device)}
               for b in boxes_per_image]
    torchvision.models.detection.FCOS.compute_loss(
        fake_fcos, targets, {}, [anchors] * len(boxes_per_image), counts)
    return torch.stack(captured["matched"])


def topk_loop_per_class(scores: torch.Tensor, k: int, score_thresh: float):
    """The usual per-class candidate selection: a Python loop of ``torch.topk``."""
    out_scores, out_points, out_classes = [], [], []
    for c in range(scores.shape[1]):
        column = scores[:, c]
        candidates = torch.nonzero(column > score_thresh).flatten()
        top = torch.topk(column[candidates], min(k, candidates.numel()))
        out_scores.append(top.values)
        out_points.append(candidates[top.indices])
        out_classes.append(torch.full_like(top.indices, c))
    return torch.cat(out_scores), torch.cat(out_points), torch.cat(out_classes)


def torchvision_giou_forward_backward(pred: torch.Tensor, target: torch.Tensor):
    pred = pred.detach().requires_grad_(True)
    loss = torchvision.ops.generalized_box_iou_loss(pred, target, reduction="sum")
    loss.backward()
    return loss, pred.grad
