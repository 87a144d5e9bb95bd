// fcos_fast::nms and fcos_fast::batched_nms on CUDA, class-aware per category segment.
//
//   1. Sort by score (torch.sort, stable, descending: the reference's order). For
//      batched_nms, stable-sort that order again by category, so each category is one
//      contiguous segment, still in score order. Plain nms is one segment.
//   2. The segment layout (fcos_fast::_nms_segment_layout, ops/nms_layout.h): a segment
//      of L boxes owns an L x ceil(L / 64)-word block of the IoU bitmask, so the mask is
//      sum over segments of L * ceil(L / 64) words and its work sum of L^2: a batch of
//      images x classes in one call costs what its categories cost, never N^2.
//      batched_nms copies the layout's totals to the host to allocate the mask and size
//      the grids: the one synchronisation before the result's (the segment count and
//      sizes are data; the only alternative is a mask sized for the worst case, N^2).
//      Plain nms computes its one-segment layout on the host and needs no such sync.
//   3. The mask (torchvision's kernel, per segment): one 64-thread block per 64 x 64 tile
//      of a segment's block, the tiles of all segments in one grid. Bit j of word
//      (i, j / 64) is set when box i ranks before box j in the segment and
//      IoU(i, j) > threshold. Tiles below the diagonal are never read and not computed.
//   4. The greedy sweep: one warp per segment, every segment in parallel. For each 64-box
//      word the warp fetches the boxes' own words, decides the 64 boxes serially with
//      shuffles (no memory latency in that chain), then ORs the kept boxes' rows into the
//      later words of the segment's removed set, each lane owning every 32nd word. The
//      removed set sits in dynamic shared memory sized by the longest segment, up to
//      kMaxSharedRemovedWords words; a longer segment keeps it in global memory.
//   5. Kept flags are scattered to score rank, so reading them in rank order gives the
//      decreasing-score (ties: lower index) order torchvision's batched_nms returns. The
//      number kept sizes the output: the second synchronisation.
// No index depends on box or score values, so NaN and inf inputs cannot make a kernel
// read or write out of bounds (a NaN IoU compares false and suppresses nothing).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/masked_select.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "ops/box_math.h"
#include "ops/checks.h"
#include "ops/cuda/nms_sweep.cuh"
#include "ops/nms_layout.h"

namespace fcos_fast {
namespace ops {

namespace {

// The layout table [kNmsLayoutRows, stride] on the device; `count` segments.
struct SegmentTable {
  const int64_t* data;
  int64_t stride;
  int64_t count;

  __device__ int64_t at(NmsLayoutRow row, int64_t s) const { return data[row * stride + s]; }
};

struct Segment {
  int64_t start;       // first sweep position
  int64_t length;      // boxes
  int64_t row_words;   // words per mask row
  int64_t mask_begin;  // first word of the segment's block of the mask
};

__device__ Segment segment_at(const SegmentTable& table, int64_t s) {
  Segment segment;
  segment.start = table.at(kNmsStart, s);
  segment.length = table.at(kNmsLength, s);
  segment.row_words = table.at(kNmsRowWords, s);
  segment.mask_begin = table.at(kNmsMaskEnd, s) - segment.length * segment.row_words;
  return segment;
}

// One 64-thread block per 64 x 64 tile, tiles numbered segment after segment, row-major
// within a segment: thread t computes the word of the segment's row row_block * 64 + t
// for the 64 columns of col_block.
template <typename scalar_t>
__global__ void nms_mask_kernel(const scalar_t* __restrict__ boxes, SegmentTable segments,
                                scalar_t threshold, uint64_t* __restrict__ mask) {
  const int64_t tile = blockIdx.x;
  // The tile's segment: the first whose tile end lies beyond the tile (binary search; the
  // same loads in every thread of the block).
  int64_t lo = 0, hi = segments.count - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (segments.at(kNmsTileEnd, mid) > tile) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  const Segment segment = segment_at(segments, lo);
  const int64_t words = segment.row_words;
  const int64_t local = tile - (segments.at(kNmsTileEnd, lo) - words * words);
  const int64_t row_block = local / words, col_block = local % words;
  if (col_block < row_block) return;  // the sweep never reads below the diagonal
  const int64_t row_start = row_block * kNmsWordBits, col_start = col_block * kNmsWordBits;
  const int rows = static_cast<int>(std::min(segment.length - row_start, int64_t(kNmsWordBits)));
  const int cols = static_cast<int>(std::min(segment.length - col_start, int64_t(kNmsWordBits)));
  const scalar_t* segment_boxes = boxes + 4 * segment.start;
  const int t = threadIdx.x;

  __shared__ scalar_t col_x1[kNmsWordBits], col_y1[kNmsWordBits], col_x2[kNmsWordBits],
      col_y2[kNmsWordBits], col_area[kNmsWordBits];
  if (t < cols) {
    const scalar_t* b = segment_boxes + 4 * (col_start + t);
    col_x1[t] = b[0];
    col_y1[t] = b[1];
    col_x2[t] = b[2];
    col_y2[t] = b[3];
    col_area[t] = box_math::box_area(b[0], b[1], b[2], b[3]);
  }
  __syncthreads();
  if (t >= rows) return;

  const int64_t i = row_start + t;
  const scalar_t* b = segment_boxes + 4 * i;
  const scalar_t x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
  const scalar_t area = box_math::box_area(x1, y1, x2, y2);
  uint64_t bits = 0;
  // Only boxes after i: the greedy sweep never looks back.
  for (int j = row_block == col_block ? t + 1 : 0; j < cols; ++j) {
    const scalar_t iou = box_math::nms_iou(x1, y1, x2, y2, area, col_x1[j], col_y1[j],
                                           col_x2[j], col_y2[j], col_area[j]);
    // `>`: an IoU equal to the threshold, or NaN, does not suppress.
    if (iou > threshold) bits |= uint64_t(1) << j;
  }
  mask[segment.mask_begin + i * words + col_block] = bits;
}

// One warp per segment (block s sweeps segment s), by nms_sweep_segment (ops/cuda/nms_sweep.cuh).
// `removed` holds the segment's words of suppressed boxes: in dynamic shared memory
// (`shared_words` of them) when they fit, else at the segment's offset in `global_removed`.
__global__ void nms_sweep_kernel(const uint64_t* __restrict__ mask, SegmentTable segments,
                                 int64_t shared_words, uint64_t* __restrict__ global_removed,
                                 const int64_t* __restrict__ rank_of,
                                 bool* __restrict__ kept_by_rank) {
  extern __shared__ uint64_t shared_removed[];
  const int64_t s = blockIdx.x;
  const Segment segment = segment_at(segments, s);
  const int64_t words = segment.row_words;
  uint64_t* removed = words <= shared_words
                          ? shared_removed
                          : global_removed + (segments.at(kNmsRowWordsEnd, s) - words);
  nms_sweep_segment(mask + segment.mask_begin, segment.length, words, removed,
                    [&](int64_t position) {
                      const int64_t q = segment.start + position;
                      kept_by_rank[rank_of != nullptr ? rank_of[q] : q] = true;
                    });
}

// fcos_fast::_nms_segment_layout, through the dispatcher (its kernel is device-generic
// ATen code in ops/nms.cpp).
at::Tensor segment_layout(const at::Tensor& lengths) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fcos_fast::_nms_segment_layout", "")
                             .typed<at::Tensor(const at::Tensor&)>();
  return op.call(lengths);
}

// A layout table on the device and the totals the host needs from it.
struct Layout {
  at::Tensor table;  // [kNmsLayoutRows, stride] int64, contiguous
  int64_t segments = 0, mask_words = 0, tiles = 0, row_words = 0, max_row_words = 0;
};

// The layout of sorted `categories` (contiguous runs). Its columns past the last segment
// describe empty segments, which no kernel reads.
Layout category_layout(const at::Tensor& categories) {
  const int64_t n = categories.size(0);
  const at::TensorOptions options = categories.options().dtype(at::kLong);
  // The segment of each sweep position: the number of category changes up to it.
  const at::Tensor changes = categories.slice(0, 1).ne(categories.slice(0, 0, n - 1));
  const at::Tensor segment_of =
      at::cat({at::zeros({1}, options), at::cumsum(changes, 0, at::kLong)});
  // Segment s spans [bounds[s], bounds[s + 1]); past the last segment both are n.
  const at::Tensor bounds = at::searchsorted(segment_of, at::arange(n + 1, options));
  Layout layout;
  layout.table = segment_layout(bounds.slice(0, 1).sub(bounds.slice(0, 0, n))).contiguous();
  const at::Tensor last = layout.table.select(1, n - 1);
  const at::Tensor totals =
      at::stack({segment_of.select(0, n - 1).add(1), last[kNmsMaskEnd], last[kNmsTileEnd],
                 last[kNmsRowWordsEnd], layout.table[kNmsRowWords].max()})
          .cpu();  // the synchronisation: segment count and sizes are data
  const int64_t* host = totals.const_data_ptr<int64_t>();
  layout.segments = host[0];
  layout.mask_words = host[1];
  layout.tiles = host[2];
  layout.row_words = host[3];
  layout.max_row_words = host[4];
  return layout;
}

// Plain NMS: one segment of all n boxes, laid out on the host and copied without a sync.
Layout single_segment_layout(int64_t n, const at::Device& device) {
  const at::Tensor host = segment_layout(at::full({1}, n, at::TensorOptions().dtype(at::kLong)));
  const int64_t* column = host.const_data_ptr<int64_t>();  // [kNmsLayoutRows, 1]
  Layout layout;
  layout.table = host.pin_memory().to(at::TensorOptions().device(device).dtype(at::kLong),
                                      /*non_blocking=*/true);
  layout.segments = 1;
  layout.mask_words = column[kNmsMaskEnd];
  layout.tiles = column[kNmsTileEnd];
  layout.row_words = column[kNmsRowWordsEnd];
  layout.max_row_words = column[kNmsRowWords];
  return layout;
}

// Greedy NMS of `boxes` ranked by `scores`; `idxs` (or undefined for plain NMS) are the
// categories. Returns the kept indices by decreasing score.
at::Tensor nms_cuda_impl(const at::Tensor& boxes, const at::Tensor& scores,
                         const at::Tensor& idxs, double iou_threshold) {
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  TORCH_CHECK(n <= std::numeric_limits<int32_t>::max(), "nms (CUDA): at most 2^31 - 1 boxes, got ",
              n);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  // Every NaN made positive first: CUDA's sort is a radix sort of the bit patterns, which
  // ranks a NaN with the sign bit set below -inf; torch.sort on the CPU (the reference,
  // and ops/score_key.h) puts every NaN first.
  const at::Tensor positive_nan = at::where(scores.isnan(), scores.abs(), scores);
  const at::Tensor order =
      std::get<1>(at::sort(positive_nan, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor sweep_order = order, rank_of;
  Layout layout;
  if (idxs.defined()) {
    rank_of = std::get<1>(at::sort(idxs.index_select(0, order), /*stable=*/true, /*dim=*/0,
                                   /*descending=*/false));
    sweep_order = order.index_select(0, rank_of);
    layout = category_layout(idxs.index_select(0, sweep_order));
  } else {
    layout = single_segment_layout(n, boxes.device());
  }
  TORCH_CHECK(layout.tiles <= std::numeric_limits<int32_t>::max(), "nms (CUDA): ",
              layout.tiles, " mask tiles (categories of up to ",
              layout.max_row_words * kNmsWordBits, " boxes) are too many for one grid");
  const at::Tensor sorted_boxes = boxes.index_select(0, sweep_order).contiguous();

  // Uninitialised: every word the sweep reads (the diagonal tiles and those right of it)
  // is written by the mask kernel.
  at::Tensor mask = at::empty({layout.mask_words}, boxes.options().dtype(at::kLong));
  at::Tensor kept_by_rank = at::zeros({n}, boxes.options().dtype(at::kBool));
  const SegmentTable segments{layout.table.const_data_ptr<int64_t>(), layout.table.stride(0),
                              layout.segments};

  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_mask_cuda", [&] {
    nms_mask_kernel<scalar_t><<<static_cast<unsigned>(layout.tiles), kNmsWordBits, 0, stream>>>(
        sorted_boxes.const_data_ptr<scalar_t>(), segments, static_cast<scalar_t>(iou_threshold),
        reinterpret_cast<uint64_t*>(mask.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // Shared memory for the longest segment's removed set, if it fits; longer segments use
  // a global one (the segments' row-word offsets index it).
  const int64_t shared_words = std::min(layout.max_row_words, kMaxSharedRemovedWords);
  at::Tensor global_removed;
  if (layout.max_row_words > kMaxSharedRemovedWords) {
    global_removed = at::empty({layout.row_words}, boxes.options().dtype(at::kLong));
  }
  uint64_t* global_removed_data =
      global_removed.defined()
          ? reinterpret_cast<uint64_t*>(global_removed.mutable_data_ptr<int64_t>())
          : nullptr;
  const size_t shared_bytes = static_cast<size_t>(shared_words) * sizeof(uint64_t);
  nms_sweep_kernel<<<static_cast<unsigned>(layout.segments), 32, shared_bytes, stream>>>(
      reinterpret_cast<const uint64_t*>(mask.const_data_ptr<int64_t>()), segments, shared_words,
      global_removed_data, rank_of.defined() ? rank_of.const_data_ptr<int64_t>() : nullptr,
      kept_by_rank.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // The kept count sizes the output: the synchronisation every NMS has.
  return order.masked_select(kept_by_rank);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  checks::nms_inputs(c10::DeviceType::CUDA, boxes, scores);
  return nms_cuda_impl(boxes.contiguous(), scores.contiguous(), at::Tensor(), iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  checks::nms_inputs(c10::DeviceType::CUDA, boxes, scores, &idxs);
  return nms_cuda_impl(boxes.contiguous(), scores.contiguous(), idxs.contiguous(),
                       iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CUDA, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::nms"), TORCH_FN(nms_cuda));
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::batched_nms"), TORCH_FN(batched_nms_cuda));
}

}  // namespace ops
}  // namespace fcos_fast
