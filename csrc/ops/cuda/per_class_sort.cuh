// The per-class sort of the CUDA top-k kernels (ops/cuda/per_class_topk_kernel.cu,
// ops/cuda/per_class_topk_padded_kernel.cu):
//
//   1. A tiled transpose writes the [N, C] scores class-major as sort keys, with every
//      non-candidate (score <= threshold, or NaN) replaced by -inf, and the point index
//      beside each as its value.
//   2. One CUB segmented radix sort (a segment per class, descending, stable: equal
//      scores keep the lower point index first, as torch.sort(stable=True)).
//   3. Per class, the candidates among the first k sorted entries are counted (a binary
//      search).
// No host-device synchronisation.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "ops/cuda/segmented_sort.cuh"

namespace fcos_fast {
namespace ops {
// Internal linkage: each kernel file that includes this has its own instances of the
// kernels (no two translation units register one host stub).
namespace {

constexpr int kClassTile = 32;  // transpose tile side; blocks of kClassTile x 8 threads
constexpr int kCountThreads = 256;

// Grid (point tiles, class tiles). Reads rows of scores, writes columns of keys.
template <typename scalar_t>
__global__ void class_major_keys_kernel(const scalar_t* __restrict__ scores, int64_t num_points,
                                        int64_t num_classes, scalar_t threshold,
                                        scalar_t* __restrict__ keys,
                                        int32_t* __restrict__ points) {
  __shared__ scalar_t tile[kClassTile][kClassTile + 1];  // +1: no bank conflicts on the column read
  for (int64_t class_tile = blockIdx.y; class_tile * kClassTile < num_classes;
       class_tile += gridDim.y) {
    const int64_t point0 = static_cast<int64_t>(blockIdx.x) * kClassTile;
    const int64_t class0 = class_tile * kClassTile;
    __syncthreads();
    for (int r = threadIdx.y; r < kClassTile; r += blockDim.y) {
      const int64_t n = point0 + r, c = class0 + threadIdx.x;
      if (n < num_points && c < num_classes) tile[r][threadIdx.x] = scores[n * num_classes + c];
    }
    __syncthreads();
    for (int r = threadIdx.y; r < kClassTile; r += blockDim.y) {
      const int64_t c = class0 + r, n = point0 + threadIdx.x;
      if (n < num_points && c < num_classes) {
        const scalar_t s = tile[threadIdx.x][r];
        keys[c * num_points + n] = s > threshold ? s : -std::numeric_limits<scalar_t>::infinity();
        points[c * num_points + n] = static_cast<int32_t>(n);
      }
    }
  }
}

// One thread per class: how many of its first k sorted keys are candidates.
template <typename scalar_t>
__global__ void count_candidates_kernel(const scalar_t* __restrict__ sorted_keys,
                                        int64_t num_points, int64_t num_classes, int64_t k,
                                        scalar_t threshold, int64_t* __restrict__ count) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= num_classes) return;
  const scalar_t* keys = sorted_keys + c * num_points;
  // Keys descend: find the first that is not > threshold within [0, k).
  int64_t lo = 0, hi = k;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (keys[mid] > threshold) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  count[c] = lo;
}

// Every class's keys (score, or -inf for a non-candidate) sorted descending, and the
// point index of each: class c at [c * N, (c + 1) * N). N * C > 0.
struct ClassMajorSort {
  at::Tensor keys;    // [C * N] scores' dtype
  at::Tensor points;  // [C * N] int32
};

template <typename scalar_t>
ClassMajorSort sort_class_major(const at::Tensor& scores, scalar_t threshold,
                                cudaStream_t stream) {
  const int64_t num_points = scores.size(0), num_classes = scores.size(1);
  const int64_t items = num_points * num_classes;
  at::Tensor keys = at::empty({items}, scores.options());
  at::Tensor points = at::empty({items}, scores.options().dtype(at::kInt));
  ClassMajorSort sorted{at::empty({items}, scores.options()),
                        at::empty({items}, scores.options().dtype(at::kInt))};

  const dim3 tiles(
      static_cast<unsigned>((num_points + kClassTile - 1) / kClassTile),
      static_cast<unsigned>(std::min<int64_t>((num_classes + kClassTile - 1) / kClassTile, 65535)));
  class_major_keys_kernel<scalar_t><<<tiles, dim3(kClassTile, 8), 0, stream>>>(
      scores.const_data_ptr<scalar_t>(), num_points, num_classes, threshold,
      keys.mutable_data_ptr<scalar_t>(), points.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sort_segments</*kDescending=*/true>(
      keys.const_data_ptr<scalar_t>(), sorted.keys.mutable_data_ptr<scalar_t>(),
      points.const_data_ptr<int32_t>(), sorted.points.mutable_data_ptr<int32_t>(), num_classes,
      num_points, scores.options(), stream);
  return sorted;
}

// count[c]: how many of class c's first k sorted keys are candidates.
template <typename scalar_t>
void count_candidates(const ClassMajorSort& sorted, int64_t num_points, int64_t num_classes,
                      int64_t k, scalar_t threshold, at::Tensor& count, cudaStream_t stream) {
  count_candidates_kernel<scalar_t>
      <<<static_cast<unsigned>((num_classes + kCountThreads - 1) / kCountThreads), kCountThreads,
         0, stream>>>(sorted.keys.const_data_ptr<scalar_t>(), num_points, num_classes, k,
                      threshold, count.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace ops
}  // namespace fcos_fast
