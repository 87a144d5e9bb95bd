// fcos_fast::per_class_topk_padded on CPU: the selection of ops/cpu/per_class_select.h
// (as per_class_topk), written to fixed-size [C, min(k, N)] tables: class c's candidates
// first, best first, then -inf scores and -1 indices.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "ops/checks.h"
#include "ops/cpu/per_class_select.h"

namespace fcos_fast {
namespace ops {

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> per_class_topk_padded_cpu(
    const at::Tensor& scores_in, int64_t k, double score_thresh) {
  checks::per_class_topk_inputs(c10::DeviceType::CPU, scores_in, k);
  const at::Tensor scores = scores_in.contiguous();
  const int64_t num_points = scores.size(0), num_classes = scores.size(1);
  TORCH_CHECK(num_points <= std::numeric_limits<uint32_t>::max(),
              "per_class_topk_padded (CPU): at most 2^32 - 1 points, got ", num_points);
  const int64_t slots = std::min(k, num_points);

  at::Tensor top_scores = at::empty({num_classes, slots}, scores.options());
  at::Tensor top_index = at::empty({num_classes, slots}, scores.options().dtype(at::kLong));
  at::Tensor counts = at::empty({num_classes}, scores.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "per_class_topk_padded_cpu", [&] {
    const scalar_t* data = scores.const_data_ptr<scalar_t>();
    const ClassSelection<scalar_t> selection =
        select_per_class(data, num_points, num_classes, slots, score_thresh);
    scalar_t* out_scores = top_scores.mutable_data_ptr<scalar_t>();
    int64_t* out_index = top_index.mutable_data_ptr<int64_t>();
    int64_t* out_counts = counts.mutable_data_ptr<int64_t>();
    at::parallel_for(0, num_classes, 16, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t count = selection.count[c];
        for (int64_t i = 0; i < slots; ++i) {
          const int64_t point = i < count ? selection.point(c, i) : -1;
          // The input's own value (a -0.0 stays -0.0; the key made it +0.0).
          out_scores[c * slots + i] = point >= 0 ? data[point * num_classes + c]
                                                 : -std::numeric_limits<scalar_t>::infinity();
          out_index[c * slots + i] = point;
        }
        out_counts[c] = count;
      }
    });
  });
  return {top_scores, top_index, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CPU, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::per_class_topk_padded"),
         TORCH_FN(per_class_topk_padded_cpu));
}

}  // namespace ops
}  // namespace fcos_fast
