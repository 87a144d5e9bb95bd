// Schema of fcos_fast::batched_nms_padded, class-aware NMS over a fixed-size candidate set
// (S segments of L slots, the first counts[s] of segment s used). Kernels:
// ops/cpu/batched_nms_padded_kernel.cpp, ops/cuda/batched_nms_padded_kernel.cu; fake
// implementation: fcos_fast/ops/batched_nms_padded.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fcos_fast, m) {
  // keep [S, L] bool.
  m.def("batched_nms_padded(Tensor boxes, Tensor scores, Tensor counts, float iou_threshold, "
        "Tensor? idxs=None) -> Tensor");
}
