// Schema of fcos_fast::fcos_assign. Kernels: ops/cpu/fcos_assign_kernel.cpp,
// ops/cuda/fcos_assign_kernel.cu; fake implementation: fcos_fast/ops/fcos_assign.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fcos_fast, m) {
  m.def(
      "fcos_assign(Tensor points, Tensor lower, Tensor upper, Tensor radius, "
      "Tensor gt_boxes, Tensor num_gt) -> Tensor");
}
