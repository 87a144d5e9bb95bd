// fcos_fast::fcos_assign on CUDA: one thread per (point, image). A block's threads stage
// the image's boxes in shared memory a tile at a time, with their centers and areas
// computed once per box, and every thread tests its point against each staged box with
// the shared rule of ops/box_math.h. Extra memory: none beyond the output (the tiles live
// in shared memory), and no host synchronisation: num_gt is read on the device.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "ops/box_math.h"
#include "ops/checks.h"

namespace fcos_fast {
namespace ops {

namespace {

constexpr int kThreads = 256;  // points per block, and boxes per shared-memory tile

template <typename scalar_t>
__global__ void fcos_assign_kernel(const scalar_t* __restrict__ points,
                                   const scalar_t* __restrict__ lower,
                                   const scalar_t* __restrict__ upper,
                                   const scalar_t* __restrict__ radius,
                                   const scalar_t* __restrict__ gt_boxes,
                                   const int64_t* __restrict__ num_gt, int64_t num_points,
                                   int64_t num_images, int64_t num_slots,
                                   int64_t* __restrict__ matched) {
  __shared__ scalar_t tile_x1[kThreads], tile_y1[kThreads], tile_x2[kThreads],
      tile_y2[kThreads], tile_cx[kThreads], tile_cy[kThreads], tile_area[kThreads];

  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = p < num_points;
  scalar_t x = 0, y = 0, lo = 0, hi = 0, r = 0;
  if (active) {
    x = points[2 * p];
    y = points[2 * p + 1];
    lo = lower[p];
    hi = upper[p];
    r = radius[p];
  }

  for (int64_t image = blockIdx.y; image < num_images; image += gridDim.y) {
    // Rows past num_gt are padding; the clamp keeps a bad count from reading past G.
    const int64_t count = min(max(num_gt[image], int64_t(0)), num_slots);
    const scalar_t* boxes = gt_boxes + image * num_slots * 4;
    scalar_t best_area = std::numeric_limits<scalar_t>::infinity();
    int64_t best = -1;
    for (int64_t first = 0; first < count; first += kThreads) {
      __syncthreads();  // the previous tile (or image) is done with
      const int64_t g = first + threadIdx.x;
      if (g < count) {
        const scalar_t* b = boxes + 4 * g;
        const scalar_t x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
        tile_x1[threadIdx.x] = x1;
        tile_y1[threadIdx.x] = y1;
        tile_x2[threadIdx.x] = x2;
        tile_y2[threadIdx.x] = y2;
        tile_cx[threadIdx.x] = box_math::box_center(x1, x2);
        tile_cy[threadIdx.x] = box_math::box_center(y1, y2);
        tile_area[threadIdx.x] = box_math::box_area(x1, y1, x2, y2);
      }
      __syncthreads();
      const int in_tile = static_cast<int>(min(count - first, int64_t(kThreads)));
      if (active) {
        // Increasing index, strictly smaller area: ties keep the lower index.
        for (int i = 0; i < in_tile; ++i) {
          if (tile_area[i] < best_area &&
              box_math::fcos_point_matches(x, y, lo, hi, r, tile_x1[i], tile_y1[i],
                                           tile_x2[i], tile_y2[i], tile_cx[i], tile_cy[i])) {
            best_area = tile_area[i];
            best = first + i;
          }
        }
      }
    }
    if (active) matched[image * num_points + p] = best;
  }
}

at::Tensor fcos_assign_cuda(const at::Tensor& points, const at::Tensor& lower,
                            const at::Tensor& upper, const at::Tensor& radius,
                            const at::Tensor& gt_boxes, const at::Tensor& num_gt) {
  checks::fcos_assign_inputs(c10::DeviceType::CUDA, points, lower, upper, radius, gt_boxes,
                             num_gt);
  const int64_t num_points = points.size(0);
  const c10::cuda::CUDAGuard device_guard(points.device());

  const int64_t num_images = gt_boxes.size(0);
  at::Tensor matched = at::empty({num_images, num_points}, points.options().dtype(at::kLong));
  if (matched.numel() == 0) return matched;
  const at::Tensor points_c = points.contiguous(), lower_c = lower.contiguous(),
                   upper_c = upper.contiguous(), radius_c = radius.contiguous(),
                   boxes_c = gt_boxes.contiguous(), num_gt_c = num_gt.contiguous();
  const dim3 grid(static_cast<unsigned>((num_points + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min<int64_t>(num_images, 65535)));
  TORCH_CHECK(grid.x <= static_cast<unsigned>(std::numeric_limits<int>::max()),
              "fcos_assign (CUDA): too many points");
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "fcos_assign_cuda", [&] {
    fcos_assign_kernel<scalar_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        points_c.const_data_ptr<scalar_t>(), lower_c.const_data_ptr<scalar_t>(),
        upper_c.const_data_ptr<scalar_t>(), radius_c.const_data_ptr<scalar_t>(),
        boxes_c.const_data_ptr<scalar_t>(), num_gt_c.const_data_ptr<int64_t>(), num_points,
        num_images, boxes_c.size(1), matched.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return matched;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CUDA, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::fcos_assign"), TORCH_FN(fcos_assign_cuda));
}

}  // namespace ops
}  // namespace fcos_fast
