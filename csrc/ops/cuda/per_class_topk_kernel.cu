// fcos_fast::per_class_topk on CUDA: no loop over classes on the host.
//
//   1. A tiled transpose writes the [N, C] scores class-major as sort keys, with every
//      non-candidate (score <= threshold, or NaN) replaced by -inf, and the point index
//      beside each as its value.
//   2. One CUB segmented radix sort (a segment per class, descending, stable: equal
//      scores keep the lower point index first, as torch.sort(stable=True)).
//   3. Per class, the candidates among the first k sorted entries are counted (a binary
//      search), a cumulative sum gives each class's output offset, and a gather writes
//      (score, point, class). The total count sizes the outputs: the one host sync.
// Scores are written from the input itself, so a -0.0 stays -0.0.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/device/device_segmented_radix_sort.cuh>

#include <cstdint>
#include <limits>

#include "ops/checks.h"

namespace fcos_fast {
namespace ops {

namespace {

constexpr int kTile = 32;  // transpose tile side; blocks of kTile x 8 threads
constexpr int kThreads = 256;

// Grid (point tiles, class tiles). Reads rows of scores, writes columns of keys.
template <typename scalar_t>
__global__ void class_major_keys_kernel(const scalar_t* __restrict__ scores, int64_t num_points,
                                        int64_t num_classes, scalar_t threshold,
                                        scalar_t* __restrict__ keys,
                                        int32_t* __restrict__ points) {
  __shared__ scalar_t tile[kTile][kTile + 1];  // +1: no bank conflicts on the column read
  for (int64_t class_tile = blockIdx.y; class_tile * kTile < num_classes;
       class_tile += gridDim.y) {
    const int64_t point0 = static_cast<int64_t>(blockIdx.x) * kTile;
    const int64_t class0 = class_tile * kTile;
    __syncthreads();
    for (int r = threadIdx.y; r < kTile; r += blockDim.y) {
      const int64_t n = point0 + r, c = class0 + threadIdx.x;
      if (n < num_points && c < num_classes) tile[r][threadIdx.x] = scores[n * num_classes + c];
    }
    __syncthreads();
    for (int r = threadIdx.y; r < kTile; r += blockDim.y) {
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

// Grid (entry chunks, classes): writes class c's counted entries at its offset.
template <typename scalar_t>
__global__ void gather_kernel(const scalar_t* __restrict__ scores,
                              const int32_t* __restrict__ sorted_points,
                              const int64_t* __restrict__ count, const int64_t* __restrict__ end,
                              int64_t num_points, int64_t num_classes,
                              scalar_t* __restrict__ out_scores, int64_t* __restrict__ out_points,
                              int64_t* __restrict__ out_classes) {
  for (int64_t c = blockIdx.y; c < num_classes; c += gridDim.y) {
    const int64_t offset = end[c] - count[c];
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < count[c];
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t point = sorted_points[c * num_points + j];
      out_scores[offset + j] = scores[point * num_classes + c];
      out_points[offset + j] = point;
      out_classes[offset + j] = c;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> per_class_topk_cuda(const at::Tensor& scores_in,
                                                                   int64_t k,
                                                                   double score_thresh) {
  checks::per_class_topk_inputs(c10::DeviceType::CUDA, scores_in, k);
  const c10::cuda::CUDAGuard device_guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t num_points = scores.size(0), num_classes = scores.size(1);
  k = std::min(k, num_points);
  const auto long_options = scores.options().dtype(at::kLong);
  if (k == 0 || num_classes == 0) {
    return {at::empty({0}, scores.options()), at::empty({0}, long_options),
            at::empty({0}, long_options)};
  }
  // CUB's segmented sort counts items in int.
  TORCH_CHECK(num_points * num_classes <= std::numeric_limits<int>::max(),
              "per_class_topk (CUDA): at most 2^31 - 1 scores, got ", num_points * num_classes);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t items = num_points * num_classes;

  at::Tensor count = at::empty({num_classes}, long_options);
  at::Tensor out_scores, out_points, out_classes;
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "per_class_topk_cuda", [&] {
    // The threshold in the scores' dtype, as the reference's tensor comparison does.
    const scalar_t threshold = static_cast<scalar_t>(score_thresh);
    at::Tensor keys = at::empty({items}, scores.options());
    at::Tensor sorted_keys = at::empty({items}, scores.options());
    at::Tensor points = at::empty({items}, scores.options().dtype(at::kInt));
    at::Tensor sorted_points = at::empty({items}, scores.options().dtype(at::kInt));

    const dim3 tiles(static_cast<unsigned>((num_points + kTile - 1) / kTile),
                     static_cast<unsigned>(std::min<int64_t>((num_classes + kTile - 1) / kTile,
                                                             65535)));
    class_major_keys_kernel<scalar_t><<<tiles, dim3(kTile, 8), 0, stream>>>(
        scores.const_data_ptr<scalar_t>(), num_points, num_classes, threshold,
        keys.mutable_data_ptr<scalar_t>(), points.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    // Segment c is [c * N, (c + 1) * N).
    const at::Tensor segment_offsets =
        at::arange(0, items + 1, num_points, scores.options().dtype(at::kInt));
    const int32_t* offsets = segment_offsets.const_data_ptr<int32_t>();
    size_t temp_bytes = 0;
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, temp_bytes, keys.const_data_ptr<scalar_t>(),
        sorted_keys.mutable_data_ptr<scalar_t>(), points.const_data_ptr<int32_t>(),
        sorted_points.mutable_data_ptr<int32_t>(), static_cast<int>(items),
        static_cast<int>(num_classes), offsets, offsets + 1, 0, sizeof(scalar_t) * 8, stream));
    at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)},
                                scores.options().dtype(at::kByte));
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        temp.mutable_data_ptr(), temp_bytes, keys.const_data_ptr<scalar_t>(),
        sorted_keys.mutable_data_ptr<scalar_t>(), points.const_data_ptr<int32_t>(),
        sorted_points.mutable_data_ptr<int32_t>(), static_cast<int>(items),
        static_cast<int>(num_classes), offsets, offsets + 1, 0, sizeof(scalar_t) * 8, stream));

    count_candidates_kernel<scalar_t>
        <<<static_cast<unsigned>((num_classes + kThreads - 1) / kThreads), kThreads, 0,
           stream>>>(sorted_keys.const_data_ptr<scalar_t>(), num_points, num_classes, k,
                     threshold, count.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor end = at::cumsum(count, 0);
    // The one synchronisation: the total count sizes the outputs.
    const int64_t total = end[num_classes - 1].item<int64_t>();
    out_scores = at::empty({total}, scores.options());
    out_points = at::empty({total}, long_options);
    out_classes = at::empty({total}, long_options);
    if (total == 0) return;
    const dim3 grid(static_cast<unsigned>((k + kThreads - 1) / kThreads),
                    static_cast<unsigned>(std::min<int64_t>(num_classes, 65535)));
    gather_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        scores.const_data_ptr<scalar_t>(), sorted_points.const_data_ptr<int32_t>(),
        count.const_data_ptr<int64_t>(), end.const_data_ptr<int64_t>(), num_points,
        num_classes, out_scores.mutable_data_ptr<scalar_t>(),
        out_points.mutable_data_ptr<int64_t>(), out_classes.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_scores, out_points, out_classes};
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CUDA, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::per_class_topk"), TORCH_FN(per_class_topk_cuda));
}

}  // namespace ops
}  // namespace fcos_fast
