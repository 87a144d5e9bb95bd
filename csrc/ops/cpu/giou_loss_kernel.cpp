// fcos_fast::giou_loss and fcos_fast::giou_loss_backward on CPU: one pass over the box
// pairs for the loss (with the reduction fused) and one for both gradients, which
// recomputes the forward from the inputs instead of saving intermediates.
//
// The per-pair math is ops/box_math.h (giou_loss_value / giou_loss_grad), shared with the
// CUDA kernels. Sums are taken over fixed chunks whose partial sums are then added in
// order, so a reduced loss does not depend on the number of threads; they accumulate in
// at::acc_type (double for float), which keeps a sum of 10^5 float losses to within an
// ulp or so of the exact one (torch's cascade sum is within a few).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <vector>

#include "ops/box_math.h"
#include "ops/checks.h"

namespace fcos_fast {
namespace ops {

namespace {

using box_math::Box;

// Pairs per task and per partial sum.
constexpr int64_t kChunk = 4096;

using checks::Reduction;

template <typename scalar_t>
Box<scalar_t> load_box(const scalar_t* data, int64_t i) {
  const scalar_t* b = data + 4 * i;
  return {b[0], b[1], b[2], b[3]};
}

template <typename scalar_t>
void store_box(scalar_t* data, int64_t i, const Box<scalar_t>& box) {
  scalar_t* b = data + 4 * i;
  b[0] = box.x1;
  b[1] = box.y1;
  b[2] = box.x2;
  b[3] = box.y2;
}

// Both gradients of every pair, the upstream gradient of pair i being grad_of(i).
template <typename scalar_t, typename GradOf>
void backward_pairs(const scalar_t* p, const scalar_t* t, scalar_t eps, int64_t n,
                    GradOf grad_of, scalar_t* grad_p, scalar_t* grad_t) {
  at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Box<scalar_t> gp, gt;
      box_math::giou_loss_grad(load_box(p, i), load_box(t, i), eps, grad_of(i), gp, gt);
      store_box(grad_p, i, gp);
      store_box(grad_t, i, gt);
    }
  });
}

at::Tensor giou_loss_cpu(const at::Tensor& pred_in, const at::Tensor& target_in,
                         c10::string_view reduction_name, double eps) {
  checks::giou_pair(c10::DeviceType::CPU, pred_in, target_in);
  const Reduction reduction = checks::parse_reduction(reduction_name);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t n = pred.size(0);
  at::Tensor loss = at::empty(reduction == Reduction::kNone ? at::IntArrayRef{n}
                                                            : at::IntArrayRef{},
                              pred.options());

  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "giou_loss_cpu", [&] {
    const scalar_t* p = pred.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    const scalar_t e = static_cast<scalar_t>(eps);
    if (reduction == Reduction::kNone) {
      scalar_t* out = loss.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          out[i] = box_math::giou_loss_value(load_box(p, i), load_box(t, i), e);
        }
      });
      return;
    }
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const int64_t num_chunks = (n + kChunk - 1) / kChunk;
    std::vector<acc_t> partial(num_chunks, acc_t(0));
    at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
      // Losses first (a vectorisable loop), then their sum in acc_t.
      std::vector<scalar_t> chunk_loss(kChunk);
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t first = chunk * kChunk, count = std::min(n - first, kChunk);
        for (int64_t i = 0; i < count; ++i) {
          chunk_loss[i] = box_math::giou_loss_value(load_box(p, first + i),
                                                    load_box(t, first + i), e);
        }
        acc_t sum = 0;
        for (int64_t i = 0; i < count; ++i) sum += chunk_loss[i];
        partial[chunk] = sum;
      }
    });
    acc_t total = 0;
    for (const acc_t s : partial) total += s;
    // The mean of no pairs is 0, as in torchvision (not 0/0).
    if (reduction == Reduction::kMean && n > 0) total /= static_cast<acc_t>(n);
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(total);
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor> giou_loss_backward_cpu(const at::Tensor& grad_output_in,
                                                          const at::Tensor& pred_in,
                                                          const at::Tensor& target_in,
                                                          c10::string_view reduction_name,
                                                          double eps) {
  checks::giou_pair(c10::DeviceType::CPU, pred_in, target_in);
  const Reduction reduction = checks::parse_reduction(reduction_name);
  const int64_t n = pred_in.size(0);
  checks::giou_grad_output(c10::DeviceType::CPU, grad_output_in, pred_in, reduction);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const at::Tensor grad_output = grad_output_in.to(pred.scalar_type()).contiguous();
  at::Tensor grad_pred = at::empty_like(pred), grad_target = at::empty_like(target);
  if (n == 0) return {grad_pred, grad_target};

  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "giou_loss_backward_cpu", [&] {
    const scalar_t* p = pred.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    const scalar_t* g = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gp = grad_pred.mutable_data_ptr<scalar_t>();
    scalar_t* gt = grad_target.mutable_data_ptr<scalar_t>();
    const scalar_t e = static_cast<scalar_t>(eps);
    // The upstream gradient of every pair: its own for 'none', the scalar's for 'sum',
    // and the scalar's divided by N for 'mean' (autograd's mean backward).
    if (reduction == Reduction::kNone) {
      backward_pairs(p, t, e, n, [g](int64_t i) { return g[i]; }, gp, gt);
    } else {
      const scalar_t shared =
          reduction == Reduction::kMean ? g[0] / static_cast<scalar_t>(n) : g[0];
      backward_pairs(p, t, e, n, [shared](int64_t) { return shared; }, gp, gt);
    }
  });
  return {grad_pred, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CPU, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::giou_loss"), TORCH_FN(giou_loss_cpu));
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::giou_loss_backward"),
         TORCH_FN(giou_loss_backward_cpu));
}

}  // namespace ops
}  // namespace fcos_fast
