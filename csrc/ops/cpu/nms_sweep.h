// The greedy sweep of the CPU NMS kernels (ops/cpu/nms_kernel.cpp,
// ops/cpu/batched_nms_padded_kernel.cpp): sort by score, gather the boxes in sweep order,
// sweep.
//
// The boxes are gathered into separate x1/y1/x2/y2/area arrays, and the inner loop
// computes every later box's IoU without skipping suppressed ones, which makes it a
// branch-free loop the compiler vectorises (re-suppressing a box changes nothing).
#pragma once

#include <cstdint>
#include <numeric>
#include <vector>

#include "ops/box_math.h"
#include "ops/cpu/sort_keys.h"

namespace fcos_fast {
namespace ops {

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

// Every box suppresses every other (plain NMS, or boxes sorted into one category).
struct AnyCategory {
  bool operator()(int64_t, int64_t) const { return true; }
};

// Greedy NMS over sweep positions [begin, end): `keep(q)` for every kept position, in
// order. `removed` holds one flag per position, zero on entry. A kept box at position i
// suppresses position j > i when IoU > threshold and `same_category(i, j)`.
template <typename scalar_t, typename SameCategoryFn, typename KeepFn>
void sweep(const SortedBoxes<scalar_t>& s, int64_t begin, int64_t end, scalar_t threshold,
           uint8_t* removed, SameCategoryFn&& same_category, KeepFn&& keep) {
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
      removed[j] |= static_cast<uint8_t>((iou > threshold) & same_category(i, j));
    }
  }
}

}  // namespace ops
}  // namespace fcos_fast
