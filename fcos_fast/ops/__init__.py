"""Fused detection operators, drop-in where ``torchvision.ops`` is used today.

Every op takes a keyword-only ``backend=None``: ``None`` means ``$FCOS_FAST_BACKEND``
if set, else the fastest backend available for the tensors' device.
``available_backends(device)`` lists what this install can run. Bad arguments raise
``InputError``, which is both a ``ValueError`` and a ``RuntimeError`` (torchvision's C++
checks raise ``RuntimeError``), so ``except`` clauses written for either catch it.
"""

from fcos_fast.ops import _dispatch
from fcos_fast.ops._dispatch import (BACKEND_ENV_VAR, BACKEND_NAMES, available_backends,
                                     unsupported_reasons)
from fcos_fast.ops._validate import VALIDATE_ENV_VAR, InputError
from fcos_fast.ops.batched_nms_padded import batched_nms_padded
from fcos_fast.ops.fcos_assign import fcos_assign
from fcos_fast.ops.giou_loss import giou_loss
from fcos_fast.ops.nms import batched_nms, nms
from fcos_fast.ops.per_class_topk import per_class_topk
from fcos_fast.ops.per_class_topk_padded import per_class_topk_padded
from fcos_fast.ops.sigmoid_focal_loss import sigmoid_focal_loss

# Last: the Triton kernels import the fakes and autograd helpers defined above.
_dispatch.load_implementations()

__all__ = [
    "nms",
    "batched_nms",
    "giou_loss",
    "fcos_assign",
    "per_class_topk",
    "per_class_topk_padded",
    "batched_nms_padded",
    "sigmoid_focal_loss",
    "available_backends",
    "unsupported_reasons",
    "BACKEND_NAMES",
    "InputError",
    "BACKEND_ENV_VAR",
    "VALIDATE_ENV_VAR",
]
