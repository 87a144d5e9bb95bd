// fcos_fast::per_class_topk on CUDA: no loop over classes on the host.
//
//   1. The per-class sort and count of ops/cuda/per_class_sort.cuh: every class's column
//      sorted by score (non-candidates as -inf), and its candidates among the first k.
//   2. A cumulative sum gives each class's output offset, and a gather writes
//      (score, point, class). The total count sizes the outputs: the one host sync.
// Scores are written from the input itself, so a -0.0 stays -0.0.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "ops/checks.h"
#include "ops/cuda/per_class_sort.cuh"

namespace fcos_fast {
namespace ops {

namespace {

constexpr int kThreads = 256;

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

  at::Tensor count = at::empty({num_classes}, long_options);
  at::Tensor out_scores, out_points, out_classes;
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "per_class_topk_cuda", [&] {
    // The threshold in the scores' dtype, as the reference's tensor comparison does.
    const scalar_t threshold = static_cast<scalar_t>(score_thresh);
    const ClassMajorSort sorted = sort_class_major(scores, threshold, stream);
    count_candidates(sorted, num_points, num_classes, k, threshold, count, stream);
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
        scores.const_data_ptr<scalar_t>(), sorted.points.const_data_ptr<int32_t>(),
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
