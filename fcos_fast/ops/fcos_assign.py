"""FCOS per-point target assignment: center sampling, scale range, least-area match.

Backends: ``reference/fcos_assign.py`` (PyTorch, a loop over box slots vectorised over
points), ``csrc/ops/cpu/fcos_assign_kernel.cpp`` and ``csrc/ops/cuda/fcos_assign_kernel.cu``
(native), ``kernels/fcos_assign.py`` (Triton). None of them builds a P×G tensor.
"""

from __future__ import annotations

import torch

from fcos_fast import _extension
from fcos_fast.ops import _dispatch, _validate


def fcos_assign(points: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                radius: torch.Tensor, gt_boxes: torch.Tensor, num_gt: torch.Tensor, *,
                backend: str | None = None, check_values: bool = True) -> torch.Tensor:
    """The ground-truth box each point is responsible for, per image.

    With ``(cx, cy)`` the center of box g and ``l, t, r, b`` the distances from point p
    to its left, top, right and bottom sides, p matches g iff::

        max(|x - cx|, |y - cy|) < radius[p]          # center sampling
        min(l, t, r, b) > 0                          # inside the box
        lower[p] < max(l, t, r, b) < upper[p]        # this level's scale range

    Among the matches the box of least area wins, ties to the lower index (the rule of
    torchvision's FCOS head).

    Args:
        points: ``[P, 2]`` point coordinates ``(x, y)``, all levels concatenated.
        lower, upper: ``[P]`` scale range of each point's level (``upper`` may be inf).
        radius: ``[P]`` center-sampling radius of each point (e.g. ``1.5 * stride``).
        gt_boxes: ``[B, G, 4]`` boxes ``(x1, y1, x2, y2)`` padded per image.
        num_gt: ``[B]`` integer count of real boxes per image; rows ``g >= num_gt[b]``
            are ignored (values outside ``[0, G]`` are rejected, or clamped when
            ``FCOS_FAST_VALIDATE=0``).
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``None`` (automatic).
        check_values: ``False`` skips the checks on values (finite points and boxes, no
            NaN bounds, ``num_gt`` in range: reductions and, on GPU, device syncs), as
            ``FCOS_FAST_VALIDATE=0`` does; ``num_gt`` is then clamped.

    Returns:
        ``[B, P]`` int64: the matched box index in ``[0, num_gt[b])``, or ``-1``.

    Raises:
        InputError: (a ``ValueError`` and a ``RuntimeError``) for a wrong shape, dtype or
            device mix, or bad values.

    Equivalent PyTorch (builds P×G; the backends do not)::

        inside = (match conditions above, [B, P, G]) & (g < num_gt[:, None, None])
        area = where(inside, box_area[:, None, :], inf)
        best, idx = area.min(dim=2); matched = where(isinf(best), -1, idx)
    """
    _validate.tensor("points", points, dims=2, last=2, floating=True)
    _validate.tensor("lower", lower, dims=1, floating=True)
    _validate.tensor("upper", upper, dims=1, floating=True)
    _validate.tensor("radius", radius, dims=1, floating=True)
    _validate.tensor("gt_boxes", gt_boxes, dims=3, last=4, floating=True)
    _validate.tensor("num_gt", num_gt, dims=1, integer=True)
    _validate.same_length(points=points, lower=lower, upper=upper, radius=radius)
    _validate.same_length(gt_boxes=gt_boxes, num_gt=num_gt)
    device = _validate.same_device(points=points, lower=lower, upper=upper, radius=radius,
                                   gt_boxes=gt_boxes, num_gt=num_gt)
    if check_values:
        _validate.finite("points", points)
        _validate.finite("gt_boxes", gt_boxes)
        _validate.not_nan("lower", lower)
        _validate.not_nan("upper", upper)
        _validate.not_nan("radius", radius)
    if check_values and _validate.has_values(num_gt):
        low, high = int(num_gt.min()), int(num_gt.max())
        if low < 0 or high > gt_boxes.shape[1]:
            raise _validate.InputError(
                f"num_gt must lie in [0, {gt_boxes.shape[1]}] (the padded box count of "
                f"gt_boxes), got values in [{low}, {high}]"
            )

    dtype = _validate.compute_dtype(points, lower, upper, radius, gt_boxes)
    implementation = _dispatch.select("fcos_assign", device, backend)
    return implementation(*(_validate.as_dtype(value, dtype)
                            for value in (points, lower, upper, radius, gt_boxes)),
                          _validate.as_dtype(num_gt, torch.int64))


def fcos_assign_fake(points, lower, upper, radius, gt_boxes, num_gt):
    return points.new_empty((gt_boxes.shape[0], points.shape[0]), dtype=torch.int64)


if _extension.NATIVE_AVAILABLE:
    torch.library.register_fake("fcos_fast::fcos_assign")(fcos_assign_fake)
