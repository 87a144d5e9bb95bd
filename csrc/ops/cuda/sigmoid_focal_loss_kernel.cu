// fcos_fast::sigmoid_focal_loss and fcos_fast::sigmoid_focal_loss_backward on CUDA. The
// per-element math is ops/focal_math.h, shared with the CPU kernels.
//
//   * The [N, C] logits are one flat array: each thread takes kVec consecutive elements
//     (16 bytes: 4 float, 8 bfloat16/half, 2 double) in one vector load when the tensors
//     are 16-byte aligned, finds the row of the first with one division and walks the
//     rest; a row's label and weight are read once per row it touches. No one-hot tensor.
//   * With with_grad (and in the backward op) the gradient is written in the same pass, in
//     the logits' dtype, one vector store per thread; half-precision logits are computed
//     in float32 in registers and never copied.
//   * 'mean' / 'sum': each block reduces its losses to one partial sum and one block adds
//     the partials in a fixed order (cuda/block_sum.cuh): deterministic, no atomics, over
//     a grid that depends on the size only.
//   * Nothing synchronises with the host: the backward reads the upstream gradient of a
//     reduced loss on the device.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "ops/checks.h"
#include "ops/cuda/block_sum.cuh"
#include "ops/focal_math.h"

namespace fcos_fast {
namespace ops {

namespace {

using checks::Reduction;
using focal_math::Gamma;

constexpr int kThreads = 256;
// Blocks of the reducing forward: a fixed number (not one per SM), so that the summation
// order, hence the result, is the same on every GPU.
constexpr int kReduceBlocks = 1024;

enum class LossOut : int { kNone, kStore, kPartialSums };
enum class GradIn : int { kScale, kUpstream };  // one factor for all, or one per element

template <typename acc_t>
struct Params {
  const int64_t* labels;  // [N]
  const acc_t* weight;    // [N] or null
  int64_t num_elements;   // N * C
  int64_t num_classes;
  acc_t alpha_positive, alpha_negative, gamma;
  LossOut loss_out;
  acc_t* loss;            // [N * C] (kStore) or [gridDim.x] (kPartialSums)
  GradIn grad_in;
  const acc_t* upstream;  // kUpstream: [N * C]; kScale: one value on the device, or null (1)
  acc_t grad_scale;       // times this (1 / (N * C) for a mean)
  bool vectorized;        // logits and grad 16-byte aligned: one vector access per thread
};

template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t value[kSize];
};

template <typename scalar_t, Gamma kGamma, bool kGrad>
__global__ void __launch_bounds__(kThreads)
    sigmoid_focal_loss_kernel(const scalar_t* __restrict__ logits, scalar_t* __restrict__ grad,
                              const Params<at::opmath_type<scalar_t>> p) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = focal_math::ScalarMath<acc_t>;
  constexpr int kVec = Pack<scalar_t>::kSize;

  acc_t scale = p.grad_scale;
  if (kGrad && p.grad_in == GradIn::kScale && p.upstream != nullptr) scale *= *p.upstream;
  acc_t sum = 0;
  const int64_t num_groups = (p.num_elements + kVec - 1) / kVec;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       group < num_groups; group += stride) {
    const int64_t first = group * kVec;
    const int count = p.num_elements - first < kVec ? static_cast<int>(p.num_elements - first) : kVec;
    Pack<scalar_t> x;
    if (p.vectorized && count == kVec) {
      x = *reinterpret_cast<const Pack<scalar_t>*>(logits + first);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) x.value[j] = j < count ? logits[first + j] : scalar_t(0);
    }
    Pack<scalar_t> out;
    int64_t row = first / p.num_classes;
    int64_t column = first - row * p.num_classes;
    int64_t label = p.labels[row];
    acc_t row_weight = p.weight != nullptr ? p.weight[row] : acc_t(1);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (j < count) {
        const bool positive = column == label;  // a label outside [0, C) matches no column
        const acc_t value = static_cast<acc_t>(x.value[j]);
        const acc_t w = positive ? -value : value;
        const acc_t alpha_t = positive ? p.alpha_positive : p.alpha_negative;
        const auto terms = focal_math::terms<M, kGamma>(w, p.gamma);
        if (p.loss_out != LossOut::kNone) {
          const acc_t loss = focal_math::loss<M>(terms, alpha_t) * row_weight;
          if (p.loss_out == LossOut::kStore) {
            p.loss[first + j] = loss;
          } else {
            sum += loss;
          }
        }
        if constexpr (kGrad) {
          acc_t g = focal_math::grad_w<M>(terms, alpha_t, p.gamma) * row_weight;
          g = (positive ? -g : g) * (p.grad_in == GradIn::kUpstream ? p.upstream[first + j]
                                                                     : scale);
          out.value[j] = static_cast<scalar_t>(g);
        }
        if (++column == p.num_classes && j + 1 < count) {  // the next element starts a row
          column = 0;
          ++row;
          label = p.labels[row];
          if (p.weight != nullptr) row_weight = p.weight[row];
        }
      }
    }
    if constexpr (kGrad) {
      if (p.vectorized && count == kVec) {
        *reinterpret_cast<Pack<scalar_t>*>(grad + first) = out;
      } else {
#pragma unroll  // constant indices: the pack stays in registers
        for (int j = 0; j < kVec; ++j) {
          if (j < count) grad[first + j] = out.value[j];
        }
      }
    }
  }
  if (p.loss_out == LossOut::kPartialSums) {  // uniform: every thread of the grid takes it
    sum = cuda_sum::block_sum<kThreads>(sum);
    if (threadIdx.x == 0) p.loss[blockIdx.x] = sum;
  }
}

bool aligned16(const void* pointer) {
  return reinterpret_cast<std::uintptr_t>(pointer) % 16 == 0;
}

template <typename scalar_t>
int64_t num_groups(int64_t num_elements) {
  constexpr int kVec = Pack<scalar_t>::kSize;
  return (num_elements + kVec - 1) / kVec;
}

template <typename scalar_t>
void launch(const at::Tensor& logits, scalar_t* grad, Params<at::opmath_type<scalar_t>> params,
            int blocks, double gamma) {
  params.vectorized = aligned16(logits.const_data_ptr()) && (grad == nullptr || aligned16(grad));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto run = [&](auto kernel) {
    kernel<<<blocks, kThreads, 0, stream>>>(logits.const_data_ptr<scalar_t>(), grad, params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  const bool with_grad = grad != nullptr;
  if (gamma == 2.0) {
    with_grad ? run(sigmoid_focal_loss_kernel<scalar_t, Gamma::kTwo, true>)
              : run(sigmoid_focal_loss_kernel<scalar_t, Gamma::kTwo, false>);
  } else if (gamma == 0.0) {
    with_grad ? run(sigmoid_focal_loss_kernel<scalar_t, Gamma::kZero, true>)
              : run(sigmoid_focal_loss_kernel<scalar_t, Gamma::kZero, false>);
  } else {
    with_grad ? run(sigmoid_focal_loss_kernel<scalar_t, Gamma::kOther, true>)
              : run(sigmoid_focal_loss_kernel<scalar_t, Gamma::kOther, false>);
  }
}

unsigned elementwise_blocks(int64_t groups) {
  // Enough blocks to fill any GPU; the kernel strides over the rest.
  return static_cast<unsigned>(std::min<int64_t>((groups + kThreads - 1) / kThreads, 1 << 16));
}

template <typename acc_t>
Params<acc_t> make_params(const at::Tensor& labels, const c10::optional<at::Tensor>& weight,
                          int64_t num_elements, int64_t num_classes, double alpha, double gamma) {
  Params<acc_t> p{};
  p.labels = labels.const_data_ptr<int64_t>();
  p.weight = weight.has_value() ? weight->const_data_ptr<acc_t>() : nullptr;
  p.num_elements = num_elements;
  p.num_classes = num_classes;
  // alpha < 0: no weighting (torchvision's -1); 1 - alpha rounded once, from double.
  p.alpha_positive = static_cast<acc_t>(alpha >= 0 ? alpha : 1.0);
  p.alpha_negative = static_cast<acc_t>(alpha >= 0 ? 1.0 - alpha : 1.0);
  p.gamma = static_cast<acc_t>(gamma);
  p.grad_in = GradIn::kScale;
  p.grad_scale = acc_t(1);
  return p;
}

std::tuple<at::Tensor, at::Tensor> sigmoid_focal_loss_cuda(
    const at::Tensor& logits_in, const at::Tensor& labels_in,
    const c10::optional<at::Tensor>& weight_in, double alpha, double gamma,
    c10::string_view reduction_name, bool with_grad) {
  checks::focal_inputs(c10::DeviceType::CUDA, logits_in, labels_in, weight_in);
  const Reduction reduction = checks::parse_reduction(reduction_name);
  const c10::cuda::CUDAGuard device_guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), labels = labels_in.contiguous();
  const c10::optional<at::Tensor> weight =
      weight_in.has_value() ? c10::optional<at::Tensor>(weight_in->contiguous()) : c10::nullopt;
  const int64_t n = logits.size(0), c = logits.size(1), elements = n * c;
  const auto options = logits.options().dtype(at::toOpMathType(logits.scalar_type()));
  at::Tensor grad = with_grad ? at::empty_like(logits) : at::empty({0}, logits.options());

  if (reduction == Reduction::kNone || elements == 0) {
    at::Tensor loss = reduction == Reduction::kNone ? at::empty({n, c}, options)
                                                    : at::empty({}, options);
    if (elements == 0) {
      // The sum of nothing is 0, the mean NaN, as torch's (and torchvision's loss.mean()).
      if (reduction != Reduction::kNone) {
        loss.fill_(reduction == Reduction::kSum ? 0.0 : std::numeric_limits<double>::quiet_NaN());
      }
      return {loss, grad};
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(),
                                    "sigmoid_focal_loss_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto params = make_params<acc_t>(labels, weight, elements, c, alpha, gamma);
      params.loss_out = LossOut::kStore;
      params.loss = loss.mutable_data_ptr<acc_t>();
      launch<scalar_t>(logits, with_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr, params,
                       elementwise_blocks(num_groups<scalar_t>(elements)), gamma);
    });
    return {loss, grad};
  }

  at::Tensor loss = at::empty({}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(),
                                  "sigmoid_focal_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int num_partial = static_cast<int>(std::min<int64_t>(
        (num_groups<scalar_t>(elements) + kThreads - 1) / kThreads, kReduceBlocks));
    at::Tensor partial = at::empty({num_partial}, options);
    auto params = make_params<acc_t>(labels, weight, elements, c, alpha, gamma);
    params.loss_out = LossOut::kPartialSums;
    params.loss = partial.mutable_data_ptr<acc_t>();
    // The gradient of the mean divides by N * C, as autograd's mean backward does.
    params.grad_scale = static_cast<acc_t>(
        reduction == Reduction::kMean ? 1.0 / static_cast<double>(elements) : 1.0);
    launch<scalar_t>(logits, with_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr, params,
                     num_partial, gamma);
    cuda_sum::finish_sum_kernel<kThreads, acc_t>
        <<<1, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            partial.const_data_ptr<acc_t>(), num_partial, elements,
            reduction == Reduction::kMean, loss.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, grad};
}

at::Tensor sigmoid_focal_loss_backward_cuda(const at::Tensor& grad_output_in,
                                            const at::Tensor& logits_in,
                                            const at::Tensor& labels_in,
                                            const c10::optional<at::Tensor>& weight_in,
                                            double alpha, double gamma,
                                            c10::string_view reduction_name) {
  checks::focal_inputs(c10::DeviceType::CUDA, logits_in, labels_in, weight_in);
  const Reduction reduction = checks::parse_reduction(reduction_name);
  checks::focal_grad_output(c10::DeviceType::CUDA, grad_output_in, logits_in, reduction);
  const c10::cuda::CUDAGuard device_guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), labels = labels_in.contiguous();
  const c10::optional<at::Tensor> weight =
      weight_in.has_value() ? c10::optional<at::Tensor>(weight_in->contiguous()) : c10::nullopt;
  const int64_t n = logits.size(0), c = logits.size(1), elements = n * c;
  at::Tensor grad = at::empty_like(logits);
  if (elements == 0) return grad;
  const at::Tensor grad_output =
      grad_output_in.to(at::toOpMathType(logits.scalar_type())).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(),
                                  "sigmoid_focal_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto params = make_params<acc_t>(labels, weight, elements, c, alpha, gamma);
    params.loss_out = LossOut::kNone;
    params.upstream = grad_output.const_data_ptr<acc_t>();
    if (reduction == Reduction::kNone) {
      params.grad_in = GradIn::kUpstream;
    } else if (reduction == Reduction::kMean) {  // the scalar's gradient over N * C
      params.grad_scale = static_cast<acc_t>(1.0 / static_cast<double>(elements));
    }
    launch<scalar_t>(logits, grad.mutable_data_ptr<scalar_t>(), params,
                     elementwise_blocks(num_groups<scalar_t>(elements)), gamma);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CUDA, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::sigmoid_focal_loss"),
         TORCH_FN(sigmoid_focal_loss_cuda));
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::sigmoid_focal_loss_backward"),
         TORCH_FN(sigmoid_focal_loss_backward_cuda));
}

}  // namespace ops
}  // namespace fcos_fast
