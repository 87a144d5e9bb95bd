// fcos_fast::nms and fcos_fast::batched_nms on CPU.
//
// Both sort once and then run torchvision's greedy sweep, with two changes that keep the
// result and make it faster:
//   * the sweep of ops/cpu/nms_sweep.h: boxes gathered in sweep order, one array per
//     coordinate, and a branch-free inner loop the compiler vectorises;
//   * batched_nms runs every category in one call: a stable sort by category of the
//     score order gives each category a contiguous segment, still in score order; the
//     segments are swept in parallel, and the kept boxes are read out in the global
//     score order, which is the merged order torchvision returns.
// Sorting is an LSD radix sort on order-preserving integer keys, stable, so equal scores
// keep the lower index first, exactly as torch.sort(stable=True).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "ops/checks.h"
#include "ops/cpu/nms_sweep.h"
#include "ops/cpu/sort_keys.h"

namespace fcos_fast {
namespace ops {

namespace {

at::Tensor to_tensor(const std::vector<int64_t>& keep, const at::Tensor& like) {
  at::Tensor out = at::empty({static_cast<int64_t>(keep.size())}, like.options().dtype(at::kLong));
  if (!keep.empty()) {
    std::memcpy(out.mutable_data_ptr<int64_t>(), keep.data(), keep.size() * sizeof(int64_t));
  }
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                   double iou_threshold) {
  checks::nms_inputs(c10::DeviceType::CPU, boxes_in, scores_in);
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const int64_t n = boxes.size(0);
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    const std::vector<int64_t> order = score_order(scores.const_data_ptr<scalar_t>(), n);
    const SortedBoxes<scalar_t> sorted(boxes.const_data_ptr<scalar_t>(), order);
    std::vector<uint8_t> removed(n, 0);
    // The threshold in the boxes' dtype, as the reference's tensor comparison does.
    sweep(sorted, 0, n, static_cast<scalar_t>(iou_threshold), removed.data(), AnyCategory{},
          [&](int64_t q) { keep.push_back(order[q]); });
  });
  return to_tensor(keep, boxes);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                           const at::Tensor& idxs_in, double iou_threshold) {
  checks::nms_inputs(c10::DeviceType::CPU, boxes_in, scores_in, &idxs_in);
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const at::Tensor idxs = idxs_in.contiguous();
  const int64_t n = boxes.size(0);
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms_cpu", [&] {
    const std::vector<int64_t> order = score_order(scores.const_data_ptr<scalar_t>(), n);

    // Stable sort of the score ranks by category: `rank_of[q]` is the score rank of the
    // q-th box in (category, score) order.
    const int64_t* category = idxs.const_data_ptr<int64_t>();
    std::vector<uint64_t> category_keys(n);
    for (int64_t r = 0; r < n; ++r) {
      category_keys[r] = static_cast<uint64_t>(category[order[r]]) ^ (uint64_t(1) << 63);
    }
    std::vector<int64_t> rank_of(n);
    std::iota(rank_of.begin(), rank_of.end(), int64_t(0));
    radix_sort_pairs(category_keys, rank_of);

    std::vector<int64_t> box_of(n);
    for (int64_t q = 0; q < n; ++q) box_of[q] = order[rank_of[q]];
    const SortedBoxes<scalar_t> sorted(boxes.const_data_ptr<scalar_t>(), box_of);

    std::vector<int64_t> segment_start;
    for (int64_t q = 0; q < n; ++q) {
      if (q == 0 || category_keys[q] != category_keys[q - 1]) segment_start.push_back(q);
    }
    segment_start.push_back(n);

    const scalar_t threshold = static_cast<scalar_t>(iou_threshold);
    std::vector<uint8_t> removed(n, 0), kept_rank(n, 0);
    const int64_t num_segments = static_cast<int64_t>(segment_start.size()) - 1;
    // Below a few thousand boxes all sweeps together take less than waking a thread.
    const int64_t grain = n < 4096 ? num_segments : 1;
    at::parallel_for(0, num_segments, grain, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        sweep(sorted, segment_start[s], segment_start[s + 1], threshold, removed.data(),
              AnyCategory{}, [&](int64_t q) { kept_rank[rank_of[q]] = 1; });
      }
    });
    // Global score order is the merge torchvision does with its final sort.
    for (int64_t r = 0; r < n; ++r) {
      if (kept_rank[r]) keep.push_back(order[r]);
    }
  });
  return to_tensor(keep, boxes);
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CPU, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::nms"), TORCH_FN(nms_cpu));
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::batched_nms"), TORCH_FN(batched_nms_cpu));
}

}  // namespace ops
}  // namespace fcos_fast
