// Schema of fcos_fast::per_class_topk. Kernels: ops/cpu/per_class_topk_kernel.cpp,
// ops/cuda/per_class_topk_kernel.cu; fake implementation: fcos_fast/ops/per_class_topk.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fcos_fast, m) {
  m.def("per_class_topk(Tensor scores, int k, float score_thresh) -> (Tensor, Tensor, Tensor)");
}
