// Schemas of fcos_fast::giou_loss and its backward (its own op, so that the autograd
// formula registered in fcos_fast/ops/giou_loss.py runs a fused kernel too).
// Kernels: ops/cpu/giou_loss_kernel.cpp, ops/cuda/giou_loss_kernel.cu.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fcos_fast, m) {
  m.def("giou_loss(Tensor pred, Tensor target, str reduction, float eps) -> Tensor");
  m.def(
      "giou_loss_backward(Tensor grad_output, Tensor pred, Tensor target, str reduction, "
      "float eps) -> (Tensor, Tensor)");
}
