// fcos_fast::per_class_topk_padded on CUDA: the per-class sort and count of
// ops/cuda/per_class_sort.cuh (what per_class_topk runs), then one kernel writes the first
// K = min(k, N) sorted entries of every class: its candidates (the keys above the
// threshold, a prefix: the keys descend), then -inf and -1. Every size follows from the
// shapes: no host-device synchronisation. Scores are written from the input itself, so a
// -0.0 stays -0.0.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "ops/checks.h"
#include "ops/cuda/per_class_sort.cuh"

namespace fcos_fast {
namespace ops {

namespace {

constexpr int kTableThreads = 256;

// Grid (slot chunks, classes): row c of the [C, K] tables.
template <typename scalar_t>
__global__ void padded_table_kernel(const scalar_t* __restrict__ scores,
                                    const scalar_t* __restrict__ sorted_keys,
                                    const int32_t* __restrict__ sorted_points, int64_t num_points,
                                    int64_t num_classes, int64_t slots, scalar_t threshold,
                                    scalar_t* __restrict__ top_scores,
                                    int64_t* __restrict__ top_index) {
  for (int64_t c = blockIdx.y; c < num_classes; c += gridDim.y) {
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < slots;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t sorted = c * num_points + j;
      scalar_t score = -std::numeric_limits<scalar_t>::infinity();
      int64_t point = -1;
      // count_candidates's rule: a candidate's key is its score, above the threshold.
      if (sorted_keys[sorted] > threshold) {
        point = sorted_points[sorted];
        score = scores[point * num_classes + c];
      }
      top_scores[c * slots + j] = score;
      top_index[c * slots + j] = point;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> per_class_topk_padded_cuda(
    const at::Tensor& scores_in, int64_t k, double score_thresh) {
  checks::per_class_topk_inputs(c10::DeviceType::CUDA, scores_in, k);
  const c10::cuda::CUDAGuard device_guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t num_points = scores.size(0), num_classes = scores.size(1);
  const int64_t slots = std::min(k, num_points);
  const auto long_options = scores.options().dtype(at::kLong);
  at::Tensor top_scores = at::empty({num_classes, slots}, scores.options());
  at::Tensor top_index = at::empty({num_classes, slots}, long_options);
  if (slots == 0 || num_classes == 0) {
    return {top_scores, top_index, at::zeros({num_classes}, long_options)};
  }
  TORCH_CHECK(num_points * num_classes <= std::numeric_limits<int>::max(),
              "per_class_topk_padded (CUDA): at most 2^31 - 1 scores, got ",
              num_points * num_classes);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor counts = at::empty({num_classes}, long_options);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "per_class_topk_padded_cuda", [&] {
    // The threshold in the scores' dtype, as the reference's tensor comparison does.
    const scalar_t threshold = static_cast<scalar_t>(score_thresh);
    const ClassMajorSort sorted = sort_class_major(scores, threshold, stream);
    count_candidates(sorted, num_points, num_classes, slots, threshold, counts, stream);
    const dim3 grid(static_cast<unsigned>((slots + kTableThreads - 1) / kTableThreads),
                    static_cast<unsigned>(std::min<int64_t>(num_classes, 65535)));
    padded_table_kernel<scalar_t><<<grid, kTableThreads, 0, stream>>>(
        scores.const_data_ptr<scalar_t>(), sorted.keys.const_data_ptr<scalar_t>(),
        sorted.points.const_data_ptr<int32_t>(), num_points, num_classes, slots, threshold,
        top_scores.mutable_data_ptr<scalar_t>(), top_index.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {top_scores, top_index, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CUDA, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::per_class_topk_padded"),
         TORCH_FN(per_class_topk_padded_cuda));
}

}  // namespace ops
}  // namespace fcos_fast
