// Schemas of fcos_fast::nms and fcos_fast::batched_nms. Kernels: ops/cpu/nms_kernel.cpp,
// ops/cuda/nms_kernel.cu; fake implementations: fcos_fast/ops/nms.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fcos_fast, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}
