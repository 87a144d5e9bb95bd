// fcos_fast::batched_nms_padded on CUDA: S segments of L slots, each its own NMS, with
// every grid and allocation sized from S and L alone, so nothing synchronises with the host
// (the op can be captured in a CUDA graph).
//
//   1. Sort keys: slot j < n = clamp(counts[s], 0, L) of segment s gets the score key of
//      ops/score_key.h (the order of torch.sort(descending=True, stable=True), as the CPU
//      kernel sorts), an unused slot a key above every score's. One CUB segmented radix
//      sort (stable) puts each segment's used slots first, by decreasing score, ties to
//      the lower slot. The keys are 64-bit even for float scores (sorting 33 bits): CUB's
//      32-bit-key kernel spills registers, its 64-bit one does not.
//   2. The mask (torchvision's kernel, per segment): one 64-thread block per 64 x 64 tile
//      on or right of the diagonal of each segment's ceil(L / 64)^2 tiles. Bit j of word
//      (i, j / 64) is set when sorted box i ranks before sorted box j, both are used, they
//      share a category (when idxs is given) and IoU(i, j) > threshold. Segment s owns
//      L * ceil(L / 64) words of the mask, of which it uses n * ceil(n / 64) (rows of
//      ceil(n / 64) words); tiles beyond its n boxes return at once. S * L * ceil(L / 64)
//      words in all, never (S * L)^2.
//   3. The greedy sweep of ops/cuda/nms_sweep.cuh: one warp per segment, all segments in
//      parallel, its removed set in shared memory up to kMaxSharedRemovedWords words (L up
//      to 4096), else in a global [S, ceil(L / 64)] scratch. Kept sorted positions are
//      written back to their slots of keep [S, L].
// One greedy sweep in score order that only suppresses within a category keeps what
// per-category NMS keeps: a category's decisions depend only on its own boxes. No index
// depends on box or score values (the sort only permutes slot numbers), so NaN and inf
// inputs cannot make a kernel read or write out of bounds.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

#include "ops/box_math.h"
#include "ops/checks.h"
#include "ops/cuda/nms_sweep.cuh"
#include "ops/cuda/segmented_sort.cuh"
#include "ops/nms_layout.h"
#include "ops/score_key.h"

namespace fcos_fast {
namespace ops {

namespace {

constexpr int kKeyThreads = 256;

// clamp(counts[s], 0, L): out-of-range counts (unvalidated) cannot reach past a segment.
// (On values, not std::min's references, which would put the result on the stack.)
__device__ __forceinline__ int64_t used_slots(const int64_t* counts, int64_t s, int64_t length) {
  const int64_t count = counts[s];
  return count < 0 ? 0 : (count > length ? length : count);
}

// The key of an unused slot: above every score's key (for float scores, the 33rd bit).
template <typename scalar_t>
constexpr uint64_t kUnusedSlotKey = sizeof(ScoreKey<scalar_t>) == 4
                                        ? uint64_t(1) << 32
                                        : std::numeric_limits<uint64_t>::max();
// Bits of the keys to sort.
template <typename scalar_t>
constexpr int kSlotKeyBits = sizeof(ScoreKey<scalar_t>) == 4 ? 33 : 64;

// Sort keys and slot numbers of every slot, segment after segment. (No score has the key
// UINT64_MAX: only NaN's is 0, and a key is all ones only for a negative NaN's bits.)
template <typename scalar_t>
__global__ void slot_keys_kernel(const scalar_t* __restrict__ scores,
                                 const int64_t* __restrict__ counts, int64_t items,
                                 int64_t length, uint64_t* __restrict__ keys,
                                 int32_t* __restrict__ slots) {
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < items;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = q / length, j = q - s * length;
    keys[q] = j < used_slots(counts, s, length) ? uint64_t(descending_key(scores[q]))
                                                : kUnusedSlotKey<scalar_t>;
    slots[q] = static_cast<int32_t>(j);
  }
}

// Block b: tile u = b % T of segment s = b / T, T = W * (W + 1) / 2 tiles on and right of
// the diagonal of the W x W tiles (W = ceil(L / 64)), row block by row block. Thread t
// computes the word of sorted row row_block * 64 + t for the 64 columns of col_block.
template <typename scalar_t>
__global__ void padded_mask_kernel(const scalar_t* __restrict__ boxes,
                                   const int64_t* __restrict__ idxs,
                                   const int64_t* __restrict__ counts,
                                   const int32_t* __restrict__ order, int64_t length,
                                   int64_t max_words, scalar_t threshold,
                                   uint64_t* __restrict__ mask) {
  const int64_t tiles = max_words * (max_words + 1) / 2;
  const int64_t s = blockIdx.x / tiles;
  const int64_t u = blockIdx.x - s * tiles;
  // Row block b's first tile is b * W - b * (b - 1) / 2: find the last one <= u.
  int64_t lo = 0, hi = max_words - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (mid * max_words - mid * (mid - 1) / 2 <= u) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int64_t row_block = lo;
  const int64_t col_block = row_block + u - (row_block * max_words - row_block * (row_block - 1) / 2);
  const int64_t n = used_slots(counts, s, length);
  const int64_t words = (n + kNmsWordBits - 1) / kNmsWordBits;
  // Past the segment's used boxes (the whole block alike): the sweep never reads it.
  if (col_block >= words) return;
  const int64_t row_start = row_block * kNmsWordBits, col_start = col_block * kNmsWordBits;
  const int rows = static_cast<int>(std::min(n - row_start, int64_t(kNmsWordBits)));
  const int cols = static_cast<int>(std::min(n - col_start, int64_t(kNmsWordBits)));
  const int32_t* segment_order = order + s * length;
  const scalar_t* segment_boxes = boxes + s * length * 4;
  const int64_t* segment_idxs = idxs != nullptr ? idxs + s * length : nullptr;
  const int t = threadIdx.x;

  __shared__ scalar_t col_x1[kNmsWordBits], col_y1[kNmsWordBits], col_x2[kNmsWordBits],
      col_y2[kNmsWordBits], col_area[kNmsWordBits];
  __shared__ int64_t col_category[kNmsWordBits];
  if (t < cols) {
    const int64_t slot = segment_order[col_start + t];
    const scalar_t* b = segment_boxes + 4 * slot;
    col_x1[t] = b[0];
    col_y1[t] = b[1];
    col_x2[t] = b[2];
    col_y2[t] = b[3];
    col_area[t] = box_math::box_area(b[0], b[1], b[2], b[3]);
    col_category[t] = segment_idxs != nullptr ? segment_idxs[slot] : 0;
  }
  __syncthreads();
  if (t >= rows) return;

  const int64_t i = row_start + t;
  const int64_t slot = segment_order[i];
  const scalar_t* b = segment_boxes + 4 * slot;
  const scalar_t x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
  const scalar_t area = box_math::box_area(x1, y1, x2, y2);
  const int64_t category = segment_idxs != nullptr ? segment_idxs[slot] : 0;
  uint64_t bits = 0;
  // Only boxes after i: the greedy sweep never looks back.
  for (int j = row_block == col_block ? t + 1 : 0; j < cols; ++j) {
    const scalar_t iou = box_math::nms_iou(x1, y1, x2, y2, area, col_x1[j], col_y1[j],
                                           col_x2[j], col_y2[j], col_area[j]);
    // `>`: an IoU equal to the threshold, or NaN, does not suppress.
    if ((iou > threshold) & (category == col_category[j])) bits |= uint64_t(1) << j;
  }
  mask[s * length * max_words + i * words + col_block] = bits;
}

// One warp per segment (block s sweeps segment s); its removed set in dynamic shared memory,
// or at row s of `global_removed` ([S, W]) when that is given.
__global__ void padded_sweep_kernel(const uint64_t* __restrict__ mask,
                                    const int64_t* __restrict__ counts,
                                    const int32_t* __restrict__ order, int64_t length,
                                    int64_t max_words, uint64_t* __restrict__ global_removed,
                                    bool* __restrict__ keep) {
  extern __shared__ uint64_t shared_removed[];
  const int64_t s = blockIdx.x;
  const int64_t n = used_slots(counts, s, length);
  uint64_t* removed = global_removed != nullptr ? global_removed + s * max_words : shared_removed;
  const int32_t* segment_order = order + s * length;
  bool* keep_row = keep + s * length;
  nms_sweep_segment(mask + s * length * max_words, n, (n + kNmsWordBits - 1) / kNmsWordBits,
                    removed, [&](int64_t position) { keep_row[segment_order[position]] = true; });
}

at::Tensor batched_nms_padded_cuda(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                                   const at::Tensor& counts_in, double iou_threshold,
                                   const std::optional<at::Tensor>& idxs_in) {
  checks::batched_nms_padded_inputs(c10::DeviceType::CUDA, boxes_in, scores_in, counts_in,
                                    idxs_in);
  const c10::cuda::CUDAGuard device_guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const at::Tensor counts = counts_in.contiguous();
  const at::Tensor idxs = idxs_in.has_value() ? idxs_in->contiguous() : at::Tensor();
  const int64_t num_segments = boxes.size(0), length = boxes.size(1);
  at::Tensor keep = at::zeros({num_segments, length}, boxes.options().dtype(at::kBool));
  const int64_t items = num_segments * length;
  if (items == 0) return keep;
  // Slot numbers are int32 and CUB counts items in int.
  TORCH_CHECK(items <= std::numeric_limits<int32_t>::max(),
              "batched_nms_padded (CUDA): at most 2^31 - 1 slots, got ", items);
  const int64_t max_words = (length + kNmsWordBits - 1) / kNmsWordBits;
  const int64_t tile_blocks = num_segments * (max_words * (max_words + 1) / 2);
  TORCH_CHECK(tile_blocks <= std::numeric_limits<int32_t>::max(), "batched_nms_padded (CUDA): ",
              tile_blocks, " mask tiles (", num_segments, " segments of ", length,
              " slots) are too many for one grid");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms_padded_cuda", [&] {
    at::Tensor keys = at::empty({items}, boxes.options().dtype(at::kLong));
    at::Tensor sorted_keys = at::empty({items}, boxes.options().dtype(at::kLong));
    at::Tensor slots = at::empty({items}, boxes.options().dtype(at::kInt));
    at::Tensor order = at::empty({items}, boxes.options().dtype(at::kInt));
    const int64_t key_blocks = std::min<int64_t>((items + kKeyThreads - 1) / kKeyThreads, 65536);
    slot_keys_kernel<scalar_t><<<static_cast<unsigned>(key_blocks), kKeyThreads, 0, stream>>>(
        scores.const_data_ptr<scalar_t>(), counts.const_data_ptr<int64_t>(), items, length,
        reinterpret_cast<uint64_t*>(keys.mutable_data_ptr<int64_t>()),
        slots.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sort_segments</*kDescending=*/false>(
        reinterpret_cast<const uint64_t*>(keys.const_data_ptr<int64_t>()),
        reinterpret_cast<uint64_t*>(sorted_keys.mutable_data_ptr<int64_t>()),
        slots.const_data_ptr<int32_t>(), order.mutable_data_ptr<int32_t>(), num_segments,
        length, boxes.options(), stream, kSlotKeyBits<scalar_t>);

    // Uninitialised: every word the sweep reads (used rows, columns on or right of the
    // diagonal) is written by the mask kernel.
    at::Tensor mask = at::empty({items * max_words}, boxes.options().dtype(at::kLong));
    padded_mask_kernel<scalar_t><<<static_cast<unsigned>(tile_blocks), kNmsWordBits, 0, stream>>>(
        boxes.const_data_ptr<scalar_t>(), idxs.defined() ? idxs.const_data_ptr<int64_t>() : nullptr,
        counts.const_data_ptr<int64_t>(), order.const_data_ptr<int32_t>(), length, max_words,
        static_cast<scalar_t>(iou_threshold),
        reinterpret_cast<uint64_t*>(mask.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const bool shared = max_words <= kMaxSharedRemovedWords;
    at::Tensor global_removed;
    if (!shared) {
      global_removed = at::empty({num_segments * max_words}, boxes.options().dtype(at::kLong));
    }
    const size_t shared_bytes = shared ? static_cast<size_t>(max_words) * sizeof(uint64_t) : 0;
    padded_sweep_kernel<<<static_cast<unsigned>(num_segments), 32, shared_bytes, stream>>>(
        reinterpret_cast<const uint64_t*>(mask.const_data_ptr<int64_t>()),
        counts.const_data_ptr<int64_t>(), order.const_data_ptr<int32_t>(), length, max_words,
        shared ? nullptr : reinterpret_cast<uint64_t*>(global_removed.mutable_data_ptr<int64_t>()),
        keep.mutable_data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CUDA, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::batched_nms_padded"),
         TORCH_FN(batched_nms_padded_cuda));
}

}  // namespace ops
}  // namespace fcos_fast
