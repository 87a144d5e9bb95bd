// Schema of fcos_fast::per_class_topk_padded, the fixed-size per_class_topk. Kernels:
// ops/cpu/per_class_topk_padded_kernel.cpp, ops/cuda/per_class_topk_padded_kernel.cu;
// fake implementation: fcos_fast/ops/per_class_topk_padded.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fcos_fast, m) {
  // (top_scores [C, K], top_index [C, K] int64, counts [C] int64), K = min(k, N).
  m.def("per_class_topk_padded(Tensor scores, int k, float score_thresh) -> "
        "(Tensor, Tensor, Tensor)");
}
