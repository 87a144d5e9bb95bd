// fcos_fast::fcos_assign on CPU: for every (image, point), the least-area ground-truth
// box that the point matches (see ops/box_math.h fcos_point_matches), -1 for none.
//
// Nothing of size P x G is built. The points are cut into blocks of consecutive points
// (in FCOS layout: a run of one row of one pyramid level, so they share a scale range
// and lie close together); for each block a cheap, conservative test keeps only the
// boxes that could match some point of it, and the exact per-point rule runs on those.
// Extra memory: the boxes' centers and areas, O(B * G), and one O(G) candidate list per
// thread.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "ops/box_math.h"
#include "ops/checks.h"

namespace fcos_fast {
namespace ops {

namespace {

using box_math::fcos_point_matches;

// Points per block. Small enough that a block stays within a row of a pyramid level
// (the finest level of an 800x1024 image has 128 points a row), large enough that the
// per-block culling of the G boxes is cheap next to the per-point work it saves.
constexpr int64_t kPointsPerBlock = 32;

// A box's precomputed values, in the reference's arithmetic.
template <typename scalar_t>
struct GtBox {
  scalar_t x1, y1, x2, y2, cx, cy, area;
};

// What every point of a block has in common: the bounds of its coordinates, the largest
// radius, the smallest lower and the largest upper scale bound. NaN values take no part
// (a NaN point can match nothing, so it needs no box).
template <typename scalar_t>
struct BlockBounds {
  scalar_t x_min, x_max, y_min, y_max, radius_max, lower_min, upper_max;
};

template <typename scalar_t>
BlockBounds<scalar_t> block_bounds(const scalar_t* points, const scalar_t* lower,
                                   const scalar_t* upper, const scalar_t* radius,
                                   int64_t begin, int64_t end) {
  constexpr scalar_t inf = std::numeric_limits<scalar_t>::infinity();
  BlockBounds<scalar_t> b{inf, -inf, inf, -inf, -inf, inf, -inf};
  for (int64_t p = begin; p < end; ++p) {
    const scalar_t x = points[2 * p], y = points[2 * p + 1];
    if (x < b.x_min) b.x_min = x;
    if (x > b.x_max) b.x_max = x;
    if (y < b.y_min) b.y_min = y;
    if (y > b.y_max) b.y_max = y;
    if (radius[p] > b.radius_max) b.radius_max = radius[p];
    if (lower[p] < b.lower_min) b.lower_min = lower[p];
    if (upper[p] > b.upper_max) b.upper_max = upper[p];
  }
  return b;
}

// Whether `box` can match any point of the block. Only necessary conditions of the exact
// rule, each evaluated where floating-point rounding is monotone, so no true match is
// ever culled: e.g. for x in [x_min, x_max], fl(x - x1) <= fl(x_max - x1).
template <typename scalar_t>
bool box_may_match(const GtBox<scalar_t>& box, const BlockBounds<scalar_t>& b) {
  const scalar_t x1 = box.x1, y1 = box.y1, x2 = box.x2, y2 = box.y2, cx = box.cx, cy = box.cy;
  // Inside: x1 < x < x2 and y1 < y < y2 (the sign of fl(x - x1) is that of x - x1).
  if (!(x1 < b.x_max && x2 > b.x_min && y1 < b.y_max && y2 > b.y_min)) return false;
  // Center sampling: |fl(x - cx)| < radius <= radius_max.
  const scalar_t r = b.radius_max;
  if (!(b.x_max - cx > -r && b.x_min - cx < r && b.y_max - cy > -r && b.y_min - cy < r)) {
    return false;
  }
  // Scale range: the farthest side is at most the largest, and at least the largest
  // smallest, distance any point of the block can have to each side.
  const scalar_t farthest_max =
      std::max(std::max(b.x_max - x1, x2 - b.x_min), std::max(b.y_max - y1, y2 - b.y_min));
  const scalar_t farthest_min =
      std::max(std::max(b.x_min - x1, x2 - b.x_max), std::max(b.y_min - y1, y2 - b.y_max));
  return farthest_max > b.lower_min && farthest_min < b.upper_max;
}

template <typename scalar_t>
void fcos_assign_cpu_impl(const at::Tensor& points, const at::Tensor& lower,
                          const at::Tensor& upper, const at::Tensor& radius,
                          const at::Tensor& gt_boxes, const at::Tensor& num_gt,
                          at::Tensor& matched) {
  const int64_t num_points = points.size(0);
  const int64_t num_images = gt_boxes.size(0);
  const int64_t num_slots = gt_boxes.size(1);
  const scalar_t* point_data = points.const_data_ptr<scalar_t>();
  const scalar_t* lower_data = lower.const_data_ptr<scalar_t>();
  const scalar_t* upper_data = upper.const_data_ptr<scalar_t>();
  const scalar_t* radius_data = radius.const_data_ptr<scalar_t>();
  const scalar_t* box_data = gt_boxes.const_data_ptr<scalar_t>();
  const int64_t* num_gt_data = num_gt.const_data_ptr<int64_t>();
  int64_t* out = matched.mutable_data_ptr<int64_t>();

  // Centers and areas, once per box.
  std::vector<GtBox<scalar_t>> boxes(num_images * num_slots);
  at::parallel_for(0, num_images * num_slots, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* b = box_data + 4 * i;
      boxes[i] = {b[0],
                  b[1],
                  b[2],
                  b[3],
                  box_math::box_center(b[0], b[2]),
                  box_math::box_center(b[1], b[3]),
                  box_math::box_area(b[0], b[1], b[2], b[3])};
    }
  });

  const int64_t blocks_per_image = (num_points + kPointsPerBlock - 1) / kPointsPerBlock;
  // Grain: 8 blocks (256 points) a task at least, so small inputs stay on one thread.
  at::parallel_for(0, num_images * blocks_per_image, 8, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> candidates(num_slots);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t image = task / blocks_per_image;
      const int64_t first = (task % blocks_per_image) * kPointsPerBlock;
      const int64_t last = std::min(first + kPointsPerBlock, num_points);
      // Rows past num_gt are padding; num_gt is clamped so that no value reads past G.
      const int64_t count = std::min(std::max(num_gt_data[image], int64_t(0)), num_slots);
      const GtBox<scalar_t>* image_boxes = boxes.data() + image * num_slots;

      const BlockBounds<scalar_t> bounds =
          block_bounds(point_data, lower_data, upper_data, radius_data, first, last);
      int64_t num_candidates = 0;
      for (int64_t g = 0; g < count; ++g) {
        if (box_may_match(image_boxes[g], bounds)) candidates[num_candidates++] = g;
      }

      int64_t* out_row = out + image * num_points;
      for (int64_t p = first; p < last; ++p) {
        const scalar_t x = point_data[2 * p], y = point_data[2 * p + 1];
        scalar_t best_area = std::numeric_limits<scalar_t>::infinity();
        int64_t best = -1;
        // Candidates in increasing index; strictly smaller area wins, so a tie keeps the
        // lower index (and a NaN or infinite area never wins), as in the reference.
        for (int64_t c = 0; c < num_candidates; ++c) {
          const GtBox<scalar_t>& box = image_boxes[candidates[c]];
          if (box.area < best_area &&
              fcos_point_matches(x, y, lower_data[p], upper_data[p], radius_data[p], box.x1,
                                 box.y1, box.x2, box.y2, box.cx, box.cy)) {
            best_area = box.area;
            best = candidates[c];
          }
        }
        out_row[p] = best;
      }
    }
  });
}

at::Tensor fcos_assign_cpu(const at::Tensor& points, const at::Tensor& lower,
                           const at::Tensor& upper, const at::Tensor& radius,
                           const at::Tensor& gt_boxes, const at::Tensor& num_gt) {
  checks::fcos_assign_inputs(c10::DeviceType::CPU, points, lower, upper, radius, gt_boxes,
                             num_gt);
  const int64_t num_points = points.size(0);
  at::Tensor matched = at::empty({gt_boxes.size(0), num_points}, points.options().dtype(at::kLong));
  if (matched.numel() == 0) return matched;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "fcos_assign_cpu", [&] {
    fcos_assign_cpu_impl<scalar_t>(points.contiguous(), lower.contiguous(), upper.contiguous(),
                                   radius.contiguous(), gt_boxes.contiguous(),
                                   num_gt.contiguous(), matched);
  });
  return matched;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CPU, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::fcos_assign"), TORCH_FN(fcos_assign_cpu));
}

}  // namespace ops
}  // namespace fcos_fast
