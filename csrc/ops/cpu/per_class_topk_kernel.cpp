// fcos_fast::per_class_topk on CPU: for every class, the up-to-k points scoring above the
// threshold, by (score descending, point index ascending): the selection of
// ops/cpu/per_class_select.h, compacted class after class.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "ops/checks.h"
#include "ops/cpu/per_class_select.h"

namespace fcos_fast {
namespace ops {

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> per_class_topk_cpu(const at::Tensor& scores_in,
                                                                  int64_t k,
                                                                  double score_thresh) {
  checks::per_class_topk_inputs(c10::DeviceType::CPU, scores_in, k);
  const at::Tensor scores = scores_in.contiguous();
  const int64_t num_points = scores.size(0), num_classes = scores.size(1);
  TORCH_CHECK(num_points <= std::numeric_limits<uint32_t>::max(),
              "per_class_topk (CPU): at most 2^32 - 1 points, got ", num_points);
  k = std::min(k, num_points);

  at::Tensor out_scores, out_points, out_classes;
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "per_class_topk_cpu", [&] {
    const scalar_t* data = scores.const_data_ptr<scalar_t>();
    const ClassSelection<scalar_t> selection =
        select_per_class(data, num_points, num_classes, k, score_thresh);
    const std::vector<int64_t>& count = selection.count;
    std::vector<int64_t> offset(num_classes + 1, 0);
    for (int64_t c = 0; c < num_classes; ++c) offset[c + 1] = offset[c] + count[c];
    const int64_t total = offset[num_classes];
    out_scores = at::empty({total}, scores.options());
    out_points = at::empty({total}, scores.options().dtype(at::kLong));
    out_classes = at::empty({total}, scores.options().dtype(at::kLong));
    scalar_t* s = out_scores.mutable_data_ptr<scalar_t>();
    int64_t* p = out_points.mutable_data_ptr<int64_t>();
    int64_t* cls = out_classes.mutable_data_ptr<int64_t>();
    at::parallel_for(0, num_classes, 16, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t i = 0; i < count[c]; ++i) {
          const int64_t point = selection.point(c, i);
          // The input's own value (a -0.0 stays -0.0; the key made it +0.0).
          s[offset[c] + i] = data[point * num_classes + c];
          p[offset[c] + i] = point;
          cls[offset[c] + i] = c;
        }
      }
    });
  });
  return {out_scores, out_points, out_classes};
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CPU, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::per_class_topk"), TORCH_FN(per_class_topk_cpu));
}

}  // namespace ops
}  // namespace fcos_fast
