"""FCOS training targets and losses.

``assign_targets`` gives every point the ground-truth box it is responsible for (through
``ops.fcos_assign``, without autograd); ``fcos_losses`` turns head outputs and those
assignments into the three named losses.

The work per batch is constant: no step loops over the images (the targets are padded
with one scatter, the losses are masked sums over every point instead of sums over a
boolean selection), so the number of operators a step dispatches after the head, and on
a GPU the number of kernel launches, does not grow with the batch
(``tests/model/test_operator_counts.py``); the shapes do not depend on the data, and the
only transfer is the targets' layout, host to device.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fcos_fast import ops
from fcos_fast.model.head import HeadOutputs
from fcos_fast.model.points import Points


class AssignedTargets(NamedTuple):
    """The target of every point of a batch.

    Attributes:
        labels: ``[B, P]`` int64 class of the matched box, ``-1`` for background.
        boxes: ``[B, P, 4]`` matched box ``(x1, y1, x2, y2)``; all zeros where
            ``labels == -1``.
    """

    labels: Tensor
    boxes: Tensor


def pad_targets(targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-image targets into padded tensors, with one copy per tensor (no loop
    of copies over the images).

    Args:
        targets: per image ``{"boxes": [G_i, 4], "labels": [G_i]}``.

    Returns:
        ``(boxes [B, G, 4], labels [B, G] int64, num_gt [B] int64)`` with
        ``G = max_i G_i + 1``: every image has at least one padding row (boxes zero,
        label ``-1``), which a point without a match gathers (``matched % G``).
    """
    num_gt = [len(target["boxes"]) for target in targets]
    capacity = max(num_gt) + 1
    first = targets[0]["boxes"]
    # Row of each box in the flattened [B * G] tables, and the counts, in one transfer
    # (made in numpy: torch.tensor of a list dispatches four operators even on the CPU).
    layout = torch.from_numpy(np.concatenate(
        [np.arange(count) + image * capacity for image, count in enumerate(num_gt)]
        + [np.asarray(num_gt)]).astype(np.int64))
    if layout.device != first.device:
        layout = layout.to(first.device)
    rows, num_gt = layout.split([len(layout) - len(targets), len(targets)])
    boxes = first.new_zeros((len(targets) * capacity, 4)).index_copy_(
        0, rows, torch.cat([target["boxes"] for target in targets]))
    labels = torch.full((len(targets) * capacity,), -1, dtype=torch.int64,
                        device=first.device).index_copy_(
        0, rows, torch.cat([target["labels"] for target in targets]))
    return boxes.view(len(targets), capacity, 4), labels.view(len(targets), capacity), num_gt


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
    # -1 % G = G - 1: a padding row (label -1, zero box), which every image has.
    row = matched.remainder(gt_boxes.shape[1])
    labels = gt_labels.gather(1, row)
    boxes = gt_boxes.gather(1, row[..., None].expand(-1, -1, 4))
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
        foreground: ``[B, P]``, true (or 1) at the points with a target box.

    Returns:
        A float32 scalar tensor ``>= 1``.
    """
    count = foreground.sum(dtype=torch.float32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(count)  # in place on a fresh tensor
        count = count / dist.get_world_size()
    # At least 1, so that a batch without boxes gives a finite (pure background)
    # classification loss.
    return count.clamp(min=1.0)


def sigmoid_focal_loss_sum(logits: Tensor, targets: Tensor, *, alpha: float = 0.25,
                           gamma: float = 2.0) -> Tensor:
    """``torchvision.ops.sigmoid_focal_loss(logits, targets.float(), alpha, gamma,
    reduction="sum")`` for 0/1 targets, in 9 operators instead of 16.

    The composition the losses used before the fused ``ops.sigmoid_focal_loss`` (one
    operator, no ``[B, P, C]`` temporaries, the gradient in the forward pass); kept as its
    operator-level equivalent for the tests and as a baseline of
    ``benchmarks/bench_sigmoid_focal_loss.py``.

    With ``w = -x`` where the target is 1 and ``w = x`` where it is 0, the cross-entropy
    is ``softplus(w)`` and ``1 - p_t`` is ``sigmoid(w)`` (Lin et al., 2017, eq. 5), so the
    loss is ``alpha_t * softplus(w) * sigmoid(w) ** gamma`` (``sigmoid(w)`` is also more
    accurate than ``1 - p_t`` for confident predictions).

    Args:
        logits: ``[...]`` float logits.
        targets: ``[...]`` bool, True for the positive class.
        alpha: weight of the positives, ``1 - alpha`` of the negatives; ``< 0`` for none.
    """
    flipped = torch.where(targets, -logits, logits)
    loss = F.softplus(flipped) * torch.sigmoid(flipped) ** gamma
    if alpha >= 0:
        loss = loss * torch.where(targets, alpha, 1 - alpha)
    return loss.sum()


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
    the head's dtype; the classification logits are not converted for it (the fused focal
    loss reads bfloat16 logits as they are and computes in float32 in registers, and their
    gradient is bfloat16), the other outputs are.

    The foreground sums are masked sums over every point (a background term times 0),
    not sums over a boolean selection: the same values, with shapes that do not depend
    on the data (no device sync, a constant number of operators). A NaN prediction of
    any point therefore makes the loss NaN, which the training loop skips.

    Args:
        outputs: head outputs, ``[B, P, C]``, ``[B, P, 4]``, ``[B, P]``.
        points: the ``P`` points.
        assigned: the targets from ``assign_targets``.

    Returns:
        ``{"cls_loss", "reg_loss", "ctr_loss"}``, scalar tensors; the training loss is
        their sum.
    """
    box_regression, centerness = (value if value.dtype == torch.float32 else value.float()
                                  for value in (outputs.box_regression, outputs.centerness))
    foreground = assigned.labels >= 0  # [B, P]
    weight = foreground.float()
    num_foreground = foreground_normalizer(weight)

    # Against the class indices (background points, label -1, are negatives of every
    # class): no one-hot targets. No value check: the labels come from the targets the
    # model checked, and NaN logits must give a NaN loss (which the training loop skips).
    cls_loss = ops.sigmoid_focal_loss(outputs.cls_logits, assigned.labels, alpha=focal_alpha,
                                      gamma=focal_gamma, reduction="sum", backend=backend,
                                      check_values=False)

    target_boxes = assigned.boxes
    if target_boxes.dtype != torch.float32:
        target_boxes = target_boxes.float()
    pred_boxes = points.decode(box_regression)
    # No value check: a diverged model's NaN box must give a NaN loss, which the training
    # loop skips, not an exception (and the check would cost a device sync per step).
    # Background points compare their prediction with a zero box: finite (the loss adds
    # eps to its denominators), and weighted 0.
    reg_loss = torch.dot(
        ops.giou_loss(pred_boxes.view(-1, 4), target_boxes.view(-1, 4), backend=backend,
                      check_values=False), weight.view(-1))

    # A background point's centerness in its zero box is meaningless (0/0): 0 instead,
    # so that neither the loss nor its gradient sees a NaN.
    ctr_targets = torch.where(foreground, points.centerness(target_boxes), 0.0)
    ctr_loss = F.binary_cross_entropy_with_logits(centerness, ctr_targets,
                                                  weight=weight, reduction="sum")

    # Normalised together: one division, whatever the number of losses.
    cls_loss, reg_loss, ctr_loss = (torch.stack((cls_loss, reg_loss, ctr_loss))
                                    / num_foreground).unbind()
    if centerness_weight != 1.0:
        ctr_loss = centerness_weight * ctr_loss
    return {"cls_loss": cls_loss, "reg_loss": reg_loss, "ctr_loss": ctr_loss}
