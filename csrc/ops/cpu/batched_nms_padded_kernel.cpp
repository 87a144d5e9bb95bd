// fcos_fast::batched_nms_padded on CPU: each segment on its own, in parallel.
//
// Segment s holds n = counts[s] candidates (clamped to [0, L]: out-of-range counts cannot
// make the kernel read past the segment) in its first n slots. They are sorted by
// decreasing score (stable: ties keep the lower slot first, NaN first, as
// torch.sort(descending=True, stable=True)) and swept greedily as plain NMS does
// (ops/cpu/nms_sweep.h), a kept box suppressing only later boxes of its own category.
// One greedy sweep in score order with that rule keeps what per-category NMS keeps: a
// category's decisions depend only on its own boxes. Memory is O(L) per thread.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/cpu/nms_sweep.h"

namespace fcos_fast {
namespace ops {

namespace {

at::Tensor batched_nms_padded_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                                  const at::Tensor& counts_in, double iou_threshold,
                                  const std::optional<at::Tensor>& idxs_in) {
  checks::batched_nms_padded_inputs(c10::DeviceType::CPU, boxes_in, scores_in, counts_in,
                                    idxs_in);
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const at::Tensor counts = counts_in.contiguous();
  const at::Tensor idxs = idxs_in.has_value() ? idxs_in->contiguous() : at::Tensor();
  const int64_t num_segments = boxes.size(0), length = boxes.size(1);
  at::Tensor keep = at::zeros({num_segments, length}, boxes.options().dtype(at::kBool));
  if (num_segments == 0 || length == 0) return keep;

  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms_padded_cpu", [&] {
    // The threshold in the boxes' dtype, as the reference's tensor comparison does.
    const scalar_t threshold = static_cast<scalar_t>(iou_threshold);
    const scalar_t* box_data = boxes.const_data_ptr<scalar_t>();
    const scalar_t* score_data = scores.const_data_ptr<scalar_t>();
    const int64_t* count_data = counts.const_data_ptr<int64_t>();
    const int64_t* idx_data = idxs.defined() ? idxs.const_data_ptr<int64_t>() : nullptr;
    bool* keep_data = keep.mutable_data_ptr<bool>();
    // Below a few thousand boxes all sweeps together take less than waking a thread.
    const int64_t grain = num_segments * length < 4096 ? num_segments : 1;
    at::parallel_for(0, num_segments, grain, [&](int64_t begin, int64_t end) {
      std::vector<uint8_t> removed;
      std::vector<int64_t> category;
      for (int64_t s = begin; s < end; ++s) {
        const int64_t n = std::clamp<int64_t>(count_data[s], 0, length);
        const std::vector<int64_t> order = score_order(score_data + s * length, n);
        const SortedBoxes<scalar_t> sorted(box_data + s * length * 4, order);
        removed.assign(n, 0);
        bool* keep_row = keep_data + s * length;
        const auto keep_slot = [&](int64_t q) { keep_row[order[q]] = true; };
        if (idx_data == nullptr) {
          sweep(sorted, 0, n, threshold, removed.data(), AnyCategory{}, keep_slot);
          continue;
        }
        category.resize(n);
        for (int64_t q = 0; q < n; ++q) category[q] = idx_data[s * length + order[q]];
        const int64_t* __restrict sorted_category = category.data();
        sweep(sorted, 0, n, threshold, removed.data(),
              [&](int64_t i, int64_t j) { return sorted_category[i] == sorted_category[j]; },
              keep_slot);
      }
    });
  });
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CPU, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::batched_nms_padded"),
         TORCH_FN(batched_nms_padded_cpu));
}

}  // namespace ops
}  // namespace fcos_fast
