// Schemas of fcos_fast::sigmoid_focal_loss and its backward (its own op, so that the
// autograd formula registered in fcos_fast/ops/sigmoid_focal_loss.py runs a fused kernel).
// Kernels: ops/cpu/sigmoid_focal_loss_kernel.cpp, ops/cuda/sigmoid_focal_loss_kernel.cu.
//
// The forward returns (loss, grad): with with_grad, grad is the gradient of the (reduced)
// loss with respect to logits, computed in the same pass (an upstream gradient of 1; the
// autograd formula scales it); without, an empty tensor. Both are new tensors: no input is
// written or aliased.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fcos_fast, m) {
  m.def(
      "sigmoid_focal_loss(Tensor logits, Tensor labels, Tensor? weight, float alpha, "
      "float gamma, str reduction, bool with_grad) -> (Tensor, Tensor)");
  m.def(
      "sigmoid_focal_loss_backward(Tensor grad_output, Tensor logits, Tensor labels, "
      "Tensor? weight, float alpha, float gamma, str reduction) -> Tensor");
}
