// Deterministic sums on CUDA, shared by the reducing losses (giou_loss, sigmoid_focal_loss):
// each block of kThreads reduces its threads' values in registers and shared memory, in a
// fixed tree, to one partial sum; one block of finish_sum_kernel then adds the partials in
// a fixed order. No atomics: the result depends on the grid size only, which the callers
// fix from the input size (never from the GPU's SM count).
#pragma once

#include <cstdint>

namespace fcos_fast {
namespace ops {
namespace cuda_sum {

// Sum of `value` over the block, valid in thread 0. blockDim.x must be kThreads.
template <int kThreads, typename scalar_t>
__device__ __forceinline__ scalar_t block_sum(scalar_t value) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, one level of them");
  __shared__ scalar_t warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : scalar_t(0);
  if (warp == 0) {
    for (int offset = kThreads / 64; offset > 0; offset /= 2) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
  }
  return value;
}

// One block of kThreads: the partial sums, in order, divided by `count` for a mean.
template <int kThreads, typename scalar_t>
__global__ void finish_sum_kernel(const scalar_t* __restrict__ partial, int num_partial,
                                  int64_t count, bool mean, scalar_t* __restrict__ out) {
  scalar_t sum = 0;
  for (int i = threadIdx.x; i < num_partial; i += blockDim.x) sum += partial[i];
  sum = block_sum<kThreads>(sum);
  if (threadIdx.x == 0) *out = mean ? sum / static_cast<scalar_t>(count) : sum;
}

}  // namespace cuda_sum
}  // namespace ops
}  // namespace fcos_fast
