// fcos_fast::nms and fcos_fast::batched_nms on CPU.
//
// Both sort once and then run torchvision's greedy sweep, with two changes that keep the
// result and make it faster:
//   * the boxes are gathered in sweep order into separate x1/y1/x2/y2/area arrays, and
//     the inner loop computes every later box's IoU without skipping suppressed ones,
//     which makes it a branch-free loop the compiler vectorises (re-suppressing a box
//     changes nothing);
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

#include "ops/box_math.h"
#include "ops/checks.h"
#include "ops/cpu/sort_keys.h"

namespace fcos_fast {
namespace ops {

namespace {

// Indices of `scores` by decreasing score, ties (and NaNs) in increasing index: the
// order of torch.argsort(scores, descending=True, stable=True).
template <typename scalar_t>
std::vector<int64_t> score_order(const scalar_t* scores, int64_t n) {
  std::vector<ScoreKey<scalar_t>> keys(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = descending_key(scores[i]);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  radix_sort_pairs(keys, order);
  return order;
}

// Boxes gathered in sweep order, one array per coordinate, with their areas.
template <typename scalar_t>
struct SortedBoxes {
  std::vector<scalar_t> x1, y1, x2, y2, area;

  SortedBoxes(const scalar_t* boxes, const std::vector<int64_t>& order)
      : x1(order.size()), y1(order.size()), x2(order.size()), y2(order.size()),
        area(order.size()) {
    for (size_t q = 0; q < order.size(); ++q) {
      const scalar_t* b = boxes + 4 * order[q];
      x1[q] = b[0];
      y1[q] = b[1];
      x2[q] = b[2];
      y2[q] = b[3];
      area[q] = box_math::box_area(b[0], b[1], b[2], b[3]);
    }
  }
};

// Greedy NMS over sweep positions [begin, end): `keep(q)` for every kept position, in
// order. `removed` holds one flag per position, zero on entry.
template <typename scalar_t, typename KeepFn>
void sweep(const SortedBoxes<scalar_t>& s, int64_t begin, int64_t end, scalar_t threshold,
           uint8_t* removed, KeepFn&& keep) {
  const scalar_t* __restrict x1 = s.x1.data();
  const scalar_t* __restrict y1 = s.y1.data();
  const scalar_t* __restrict x2 = s.x2.data();
  const scalar_t* __restrict y2 = s.y2.data();
  const scalar_t* __restrict area = s.area.data();
  for (int64_t i = begin; i < end; ++i) {
    if (removed[i]) continue;
    keep(i);
    const scalar_t ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], iarea = area[i];
    for (int64_t j = i + 1; j < end; ++j) {
      // `>`: an IoU equal to the threshold, or NaN, does not suppress.
      const scalar_t iou =
          box_math::nms_iou(ix1, iy1, ix2, iy2, iarea, x1[j], y1[j], x2[j], y2[j], area[j]);
      removed[j] |= static_cast<uint8_t>(iou > threshold);
    }
  }
}

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
    sweep(sorted, 0, n, static_cast<scalar_t>(iou_threshold), removed.data(),
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
              [&](int64_t q) { kept_rank[rank_of[q]] = 1; });
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
