"""fcos_fast: an FCOS object detector whose hot paths run as fused kernels.

``from fcos_fast import ops`` gives the fused operators (``nms``, ``batched_nms``,
``giou_loss``, ``fcos_assign``, ``per_class_topk``) with interchangeable backends.
"""

from fcos_fast import ops
from fcos_fast._extension import NATIVE_AVAILABLE

__version__ = "0.1.0"

__all__ = ["ops", "NATIVE_AVAILABLE", "__version__"]
