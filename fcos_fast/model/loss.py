"""FCOS training targets and losses.

``assign_targets`` gives every point the ground-truth box it is responsible for (through
``ops.fcos_assign``, without autograd); ``fcos_losses`` turns head outputs and those
assignments into the three named losses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from fcos_fast import ops
from fcos_fast.model.head import HeadOutputs
from fcos_fast.model.points import Points, centerness_targets, decode_boxes


class AssignedTargets(NamedTuple):
    """The target of every point of a batch.

    Attributes:
        labels: ``[B, P]`` int64 class of the matched box, ``-1`` for background.
        boxes: ``[B, P, 4]`` matched box ``(x1, y1, x2, y2)``; meaningless where
            ``labels == -1``.
    """

    labels: Tensor
    boxes: Tensor


def pad_targets(targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-image targets into padded tensors.

    Args:
        targets: per image ``{"boxes": [G_i, 4], "labels": [G_i]}``.

    Returns:
        ``(boxes [B, G, 4], labels [B, G] int64, num_gt [B] int64)`` with
        ``G = max(1, max_i G_i)``; rows past ``num_gt[b]`` are zero. ``G`` is at least 1
        so that gathering by a clamped match index is always valid, even for a batch
        without any boxes.
    """
    num_gt = [len(target["boxes"]) for target in targets]
    capacity = max([1] + num_gt)
    first = targets[0]["boxes"]
    boxes = first.new_zeros((len(targets), capacity, 4))
    labels = torch.zeros((len(targets), capacity), dtype=torch.int64, device=first.device)
    for index, target in enumerate(targets):
        boxes[index, : num_gt[index]] = target["boxes"]
        labels[index, : num_gt[index]] = target["labels"]
    return boxes, labels, torch.tensor(num_gt, dtype=torch.int64, device=first.device)


@torch.no_grad()
def assign_targets(points: Points, targets: list[dict[str, Tensor]], *,
                   center_sampling_radius: float, backend: str | None = None
                   ) -> AssignedTargets:
    """Match every point to the ground-truth box it must predict.

    A point matches a box when it lies inside the box, within
    ``center_sampling_radius * stride`` of the box center (center sampling), and the
    box's largest side distance is in the point's level range (``Points.scale_ranges``);
    among several matches the box of least area wins.

    Args:
        points: the batch's points, ``P`` of them.
        targets: per image ``{"boxes": [G_i, 4] (x1, y1, x2, y2), "labels": [G_i]}`` in
            the coordinates of ``points``.
        center_sampling_radius: radius in strides.
        backend: ``fcos_fast.ops`` backend, ``None`` for automatic.

    Returns:
        ``AssignedTargets`` of shapes ``[B, P]`` and ``[B, P, 4]``.
    """
    gt_boxes, gt_labels, num_gt = pad_targets(targets)
    lower, upper = points.scale_ranges()
    radius = points.stride * center_sampling_radius
    # The targets were checked by the model (FCOS._check_targets); the points are its own.
    matched = ops.fcos_assign(points.xy, lower, upper, radius, gt_boxes, num_gt,
                              backend=backend, check_values=False)  # [B, P], -1 = no match
    index = matched.clamp(min=0)
    labels = gt_labels.gather(1, index).masked_fill(matched < 0, -1)
    boxes = gt_boxes.gather(1, index[..., None].expand(-1, -1, 4))
    return AssignedTargets(labels, boxes)


def foreground_normalizer(foreground: Tensor) -> Tensor:
    """The number the losses are divided by: this batch's foreground point count,
    averaged over the processes of a distributed run, and at least 1.

    With data parallelism each process's loss is ``S_k / N_avg`` (``S_k`` its summed loss,
    ``N_avg = sum_k N_k / W``); DDP averages the gradients over the ``W`` processes, so
    they are those of ``sum_k S_k / sum_k N_k``, the loss of one process that sees the
    whole batch (official FCOS and mmdetection normalise so). Without it each process
    would weigh its images by its own count. A tensor all the way (one all-reduce, no
    host sync); only when ``torch.distributed`` is initialised with more than one process,
    so every process must compute the losses at each step, as DDP training does.

    Args:
        foreground: ``[B, P]`` bool, the points with a target box.

    Returns:
        A float32 scalar tensor ``>= 1``.
    """
    count = foreground.sum().to(torch.float32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(count)  # in place on a fresh tensor
        count = count / dist.get_world_size()
    # At least 1, so that a batch without boxes gives a finite (pure background)
    # classification loss.
    return count.clamp(min=1.0)


def fcos_losses(outputs: HeadOutputs, points: Points, assigned: AssignedTargets, *,
                centerness_weight: float = 1.0, focal_alpha: float = 0.25,
                focal_gamma: float = 2.0, backend: str | None = None) -> dict[str, Tensor]:
    """The FCOS losses, each a sum over the batch divided by its number of foreground points.

    The divisor is ``foreground_normalizer``: in a distributed run, the foreground count
    averaged over the processes.

    * ``cls_loss``: sigmoid focal loss over every point and class (background points
      have all-zero targets).
    * ``reg_loss``: GIoU loss between the decoded prediction and the matched box, over
      foreground points (``ops.giou_loss``).
    * ``ctr_loss``: ``centerness_weight`` times the binary cross-entropy between the
      centerness logit and the centerness of the point in its box, over foreground points.

    With ``centerness_weight=1`` these are torchvision's ``classification``,
    ``bbox_regression`` and ``bbox_ctrness``. The losses are computed in float32 whatever
    the head's dtype.

    Args:
        outputs: head outputs, ``[B, P, C]``, ``[B, P, 4]``, ``[B, P]``.
        points: the ``P`` points.
        assigned: the targets from ``assign_targets``.

    Returns:
        ``{"cls_loss", "reg_loss", "ctr_loss"}``, scalar tensors; the training loss is
        their sum.
    """
    cls_logits = outputs.cls_logits.float()
    foreground = assigned.labels >= 0  # [B, P]
    num_foreground = foreground_normalizer(foreground)

    # One-hot class targets; scattering 0 for background points leaves them all-zero.
    cls_targets = torch.zeros_like(cls_logits).scatter_(
        2, assigned.labels.clamp(min=0)[..., None], foreground[..., None].to(cls_logits.dtype))
    cls_loss = sigmoid_focal_loss(cls_logits, cls_targets, alpha=focal_alpha,
                                  gamma=focal_gamma, reduction="sum")

    batch_size = foreground.shape[0]
    xy = points.xy.expand(batch_size, -1, -1)[foreground]  # [F, 2]
    stride = points.stride.expand(batch_size, -1)[foreground]  # [F]
    target_boxes = assigned.boxes[foreground].float()  # [F, 4]
    pred_boxes = decode_boxes(xy, stride, outputs.box_regression[foreground].float())
    # No value check: a diverged model's NaN box must give a NaN loss, which the training
    # loop skips, not an exception (and the check would cost a device sync per step).
    reg_loss = ops.giou_loss(pred_boxes, target_boxes, reduction="sum", backend=backend,
                             check_values=False)

    ctr_loss = F.binary_cross_entropy_with_logits(
        outputs.centerness[foreground].float(), centerness_targets(xy, target_boxes),
        reduction="sum")

    return {
        "cls_loss": cls_loss / num_foreground,
        "reg_loss": reg_loss / num_foreground,
        "ctr_loss": centerness_weight * ctr_loss / num_foreground,
    }
