// fcos_fast::giou_loss and fcos_fast::giou_loss_backward on CUDA. The per-pair math is
// ops/box_math.h (giou_loss_value / giou_loss_grad), shared with the CPU kernels.
//
//   * Boxes are read and gradients written as one float4 (or two double2) per row when
//     the tensors are 16-byte aligned, which they are unless sliced at an odd offset.
//   * 'mean' / 'sum' fuse the reduction: each block reduces its pairs' losses in
//     registers and shared memory to one partial sum, and a one-block kernel adds the
//     partials in a fixed order, so the result is deterministic (no atomics;
//     cuda/block_sum.cuh).
//   * The backward reads the upstream gradient (and divides by N for 'mean') on the
//     device: nothing here synchronises with the host.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "ops/box_math.h"
#include "ops/checks.h"
#include "ops/cuda/block_sum.cuh"

namespace fcos_fast {
namespace ops {

namespace {

using box_math::Box;

constexpr int kThreads = 256;
// Blocks of the reducing forward: a fixed number (not one per SM count), so that the
// summation order, hence the result, is the same on every GPU.
constexpr int kReduceBlocks = 512;

using checks::Reduction;

template <typename scalar_t, bool kAligned>
__device__ __forceinline__ Box<scalar_t> load_box(const scalar_t* __restrict__ data,
                                                  int64_t i) {
  if constexpr (kAligned && std::is_same_v<scalar_t, float>) {
    const float4 v = reinterpret_cast<const float4*>(data)[i];
    return {v.x, v.y, v.z, v.w};
  } else if constexpr (kAligned) {
    const double2* row = reinterpret_cast<const double2*>(data) + 2 * i;
    const double2 a = row[0], b = row[1];
    return {a.x, a.y, b.x, b.y};
  } else {
    const scalar_t* b = data + 4 * i;
    return {b[0], b[1], b[2], b[3]};
  }
}

template <typename scalar_t, bool kAligned>
__device__ __forceinline__ void store_box(scalar_t* __restrict__ data, int64_t i,
                                          const Box<scalar_t>& box) {
  if constexpr (kAligned && std::is_same_v<scalar_t, float>) {
    reinterpret_cast<float4*>(data)[i] = make_float4(box.x1, box.y1, box.x2, box.y2);
  } else if constexpr (kAligned) {
    double2* row = reinterpret_cast<double2*>(data) + 2 * i;
    row[0] = make_double2(box.x1, box.y1);
    row[1] = make_double2(box.x2, box.y2);
  } else {
    scalar_t* b = data + 4 * i;
    b[0] = box.x1;
    b[1] = box.y1;
    b[2] = box.x2;
    b[3] = box.y2;
  }
}

template <typename scalar_t, bool kAligned>
__global__ void giou_loss_kernel(const scalar_t* __restrict__ pred,
                                 const scalar_t* __restrict__ target, scalar_t eps, int64_t n,
                                 scalar_t* __restrict__ loss) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    loss[i] = box_math::giou_loss_value(load_box<scalar_t, kAligned>(pred, i),
                                        load_box<scalar_t, kAligned>(target, i), eps);
  }
}

template <typename scalar_t, bool kAligned>
__global__ void giou_loss_partial_sums_kernel(const scalar_t* __restrict__ pred,
                                              const scalar_t* __restrict__ target, scalar_t eps,
                                              int64_t n, scalar_t* __restrict__ partial) {
  scalar_t sum = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    sum += box_math::giou_loss_value(load_box<scalar_t, kAligned>(pred, i),
                                     load_box<scalar_t, kAligned>(target, i), eps);
  }
  sum = cuda_sum::block_sum<kThreads>(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// kPerPair: grad_output holds one gradient per pair ('none'); otherwise it is the scalar
// gradient of the sum, divided by n for 'mean'.
template <typename scalar_t, bool kAligned, bool kPerPair>
__global__ void giou_loss_backward_kernel(const scalar_t* __restrict__ grad_output,
                                          const scalar_t* __restrict__ pred,
                                          const scalar_t* __restrict__ target, scalar_t eps,
                                          int64_t n, bool mean, scalar_t* __restrict__ grad_pred,
                                          scalar_t* __restrict__ grad_target) {
  scalar_t shared_grad = 0;
  if constexpr (!kPerPair) {
    shared_grad = mean ? grad_output[0] / static_cast<scalar_t>(n) : grad_output[0];
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    Box<scalar_t> gp, gt;
    box_math::giou_loss_grad(load_box<scalar_t, kAligned>(pred, i),
                             load_box<scalar_t, kAligned>(target, i), eps,
                             kPerPair ? grad_output[i] : shared_grad, gp, gt);
    store_box<scalar_t, kAligned>(grad_pred, i, gp);
    store_box<scalar_t, kAligned>(grad_target, i, gt);
  }
}

bool aligned16(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

unsigned elementwise_blocks(int64_t n) {
  // Enough blocks to fill any GPU; the kernels stride over the rest.
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 16));
}

// Runs `launch(std::integral_constant<bool, aligned>)` with aligned = every tensor's data
// is 16-byte aligned.
template <typename Launch>
void with_alignment(std::initializer_list<const at::Tensor*> tensors, Launch&& launch) {
  bool aligned = true;
  for (const at::Tensor* t : tensors) aligned = aligned && aligned16(*t);
  if (aligned) {
    launch(std::true_type{});
  } else {
    launch(std::false_type{});
  }
}

at::Tensor giou_loss_cuda(const at::Tensor& pred_in, const at::Tensor& target_in,
                          c10::string_view reduction_name, double eps) {
  checks::giou_pair(c10::DeviceType::CUDA, pred_in, target_in);
  const Reduction reduction = checks::parse_reduction(reduction_name);
  const c10::cuda::CUDAGuard device_guard(pred_in.device());
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const int64_t n = pred.size(0);
  if (reduction == Reduction::kNone) {
    at::Tensor loss = at::empty({n}, pred.options());
    if (n == 0) return loss;
    AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "giou_loss_cuda", [&] {
      with_alignment({&pred, &target}, [&](auto aligned) {
        giou_loss_kernel<scalar_t, decltype(aligned)::value>
            <<<elementwise_blocks(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                pred.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(),
                static_cast<scalar_t>(eps), n, loss.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    return loss;
  }

  at::Tensor loss = at::empty({}, pred.options());
  if (n == 0) return loss.zero_();  // the mean of no pairs is 0, as in torchvision
  const int num_partial =
      static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kReduceBlocks));
  at::Tensor partial = at::empty({num_partial}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "giou_loss_cuda", [&] {
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    with_alignment({&pred, &target}, [&](auto aligned) {
      giou_loss_partial_sums_kernel<scalar_t, decltype(aligned)::value>
          <<<num_partial, kThreads, 0, stream>>>(
              pred.const_data_ptr<scalar_t>(), target.const_data_ptr<scalar_t>(),
              static_cast<scalar_t>(eps), n, partial.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    cuda_sum::finish_sum_kernel<kThreads, scalar_t><<<1, kThreads, 0, stream>>>(
        partial.const_data_ptr<scalar_t>(), num_partial, n, reduction == Reduction::kMean,
        loss.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor> giou_loss_backward_cuda(const at::Tensor& grad_output_in,
                                                           const at::Tensor& pred_in,
                                                           const at::Tensor& target_in,
                                                           c10::string_view reduction_name,
                                                           double eps) {
  checks::giou_pair(c10::DeviceType::CUDA, pred_in, target_in);
  const Reduction reduction = checks::parse_reduction(reduction_name);
  const int64_t n = pred_in.size(0);
  checks::giou_grad_output(c10::DeviceType::CUDA, grad_output_in, pred_in, reduction);
  const c10::cuda::CUDAGuard device_guard(pred_in.device());
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous();
  const at::Tensor grad_output = grad_output_in.to(pred.scalar_type()).contiguous();
  at::Tensor grad_pred = at::empty_like(pred), grad_target = at::empty_like(target);
  if (n == 0) return {grad_pred, grad_target};

  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "giou_loss_backward_cuda", [&] {
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    with_alignment({&pred, &target, &grad_pred, &grad_target}, [&](auto aligned) {
      constexpr bool kAligned = decltype(aligned)::value;
      const auto launch = [&](auto kernel) {
        kernel<<<elementwise_blocks(n), kThreads, 0, stream>>>(
            grad_output.const_data_ptr<scalar_t>(), pred.const_data_ptr<scalar_t>(),
            target.const_data_ptr<scalar_t>(), static_cast<scalar_t>(eps), n,
            reduction == Reduction::kMean, grad_pred.mutable_data_ptr<scalar_t>(),
            grad_target.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (reduction == Reduction::kNone) {
        launch(giou_loss_backward_kernel<scalar_t, kAligned, true>);
      } else {
        launch(giou_loss_backward_kernel<scalar_t, kAligned, false>);
      }
    });
  });
  return {grad_pred, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CUDA, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::giou_loss"), TORCH_FN(giou_loss_cuda));
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::giou_loss_backward"),
         TORCH_FN(giou_loss_backward_cuda));
}

}  // namespace ops
}  // namespace fcos_fast
