// fcos_fast::nms and fcos_fast::batched_nms on CUDA, entirely on the device.
//
//   1. Sort by score (torch.sort, stable, descending: the reference's order). For
//      batched_nms, stable-sort that order again by category, so each category is one
//      contiguous segment still in score order.
//   2. The IoU bitmask (torchvision's kernel): bit j of word (i, j / 64) is set when box i
//      ranks before box j, both have one category, and IoU(i, j) > threshold. Tiles with
//      no pair of one category are skipped: the sweep never reads them.
//   3. The greedy sweep, on the device: one warp per segment (so the 80 categories of a
//      detector sweep in parallel). For each 64-box word the warp first fetches the
//      boxes' own words of the mask, decides the 64 boxes serially with shuffles (no
//      memory latency in that chain), then ORs the kept boxes' rows into the words
//      after it, lanes striding over the words. torchvision copies the mask to the host
//      and sweeps there; here nothing crosses until the kept count sizes the output.
//   4. Kept flags are scattered to score rank, so reading them in rank order gives the
//      decreasing-score (ties: lower index) order that torchvision's batched_nms returns.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/masked_select.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "ops/box_math.h"
#include "ops/checks.h"

namespace fcos_fast {
namespace ops {

namespace {

constexpr int kWordBits = 64;  // boxes per mask word
constexpr unsigned kFullWarp = 0xffffffffu;

// Grid (col_block, row_block), 64 threads: thread t computes the word of row
// row_block * 64 + t for the 64 columns of col_block.
template <typename scalar_t>
__global__ void nms_mask_kernel(const scalar_t* __restrict__ boxes,
                                const int64_t* __restrict__ categories, int64_t n,
                                int64_t col_blocks, scalar_t threshold,
                                uint64_t* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int64_t row_start = row_block * kWordBits, col_start = col_block * kWordBits;
  const int rows = static_cast<int>(min(n - row_start, int64_t(kWordBits)));
  const int cols = static_cast<int>(min(n - col_start, int64_t(kWordBits)));
  // Sorted by category: a later tile shares a category with this row block only if its
  // first box has the row block's last category.
  if (categories != nullptr && col_block > row_block &&
      categories[row_start + rows - 1] != categories[col_start]) {
    return;
  }

  __shared__ scalar_t col_x1[kWordBits], col_y1[kWordBits], col_x2[kWordBits],
      col_y2[kWordBits], col_area[kWordBits];
  __shared__ int64_t col_category[kWordBits];
  if (threadIdx.x < cols) {
    const scalar_t* b = boxes + 4 * (col_start + threadIdx.x);
    col_x1[threadIdx.x] = b[0];
    col_y1[threadIdx.x] = b[1];
    col_x2[threadIdx.x] = b[2];
    col_y2[threadIdx.x] = b[3];
    col_area[threadIdx.x] = box_math::box_area(b[0], b[1], b[2], b[3]);
    col_category[threadIdx.x] = categories != nullptr ? categories[col_start + threadIdx.x] : 0;
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;

  const int64_t i = row_start + threadIdx.x;
  const scalar_t* b = boxes + 4 * i;
  const scalar_t x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
  const scalar_t area = box_math::box_area(x1, y1, x2, y2);
  const int64_t category = categories != nullptr ? categories[i] : 0;
  uint64_t bits = 0;
  // Only boxes after i: the greedy sweep never looks back.
  for (int j = row_block == col_block ? threadIdx.x + 1 : 0; j < cols; ++j) {
    const scalar_t iou = box_math::nms_iou(x1, y1, x2, y2, area, col_x1[j], col_y1[j],
                                           col_x2[j], col_y2[j], col_area[j]);
    // `>`: an IoU equal to the threshold, or NaN, does not suppress.
    if ((col_category[j] == category) & (iou > threshold)) bits |= uint64_t(1) << j;
  }
  mask[i * col_blocks + col_block] = bits;
}

// One warp per block. Each block takes sweep positions blockIdx.x, + gridDim.x, ...;
// at a segment start (the first box of its category) it sweeps the whole segment.
// `removed` (dynamic shared memory) holds the segment's words of suppressed boxes.
__global__ void nms_sweep_kernel(const uint64_t* __restrict__ mask,
                                 const int64_t* __restrict__ categories, int64_t n,
                                 int64_t col_blocks, const int64_t* __restrict__ rank_of,
                                 bool* __restrict__ kept_by_rank) {
  extern __shared__ uint64_t removed[];
  const int lane = threadIdx.x;
  for (int64_t start = blockIdx.x; start < n; start += gridDim.x) {
    if (start > 0 && (categories == nullptr || categories[start] == categories[start - 1])) {
      continue;  // not the first box of a segment
    }
    // The segment ends at the first box of another category (warp-wide search).
    int64_t end = n;
    if (categories != nullptr) {
      const int64_t category = categories[start];
      for (int64_t base = start + 1; base < n; base += 32) {
        const int64_t q = base + lane;
        const unsigned other = __ballot_sync(kFullWarp, q < n && categories[q] != category);
        if (other != 0) {
          end = base + __ffs(other) - 1;
          break;
        }
      }
    }
    const int64_t first_word = start / kWordBits, last_word = (end - 1) / kWordBits;
    for (int64_t w = lane; w <= last_word - first_word; w += 32) removed[w] = 0;
    __syncwarp();

    for (int64_t word = first_word; word <= last_word; ++word) {
      const int64_t word_start = word * kWordBits;
      const int64_t lo = max(start, word_start), hi = min(end, word_start + kWordBits);
      // The boxes' own words: lane l holds those of boxes word_start + l and + l + 32.
      uint64_t own_low = 0, own_high = 0;
      if (word_start + lane >= lo && word_start + lane < hi) {
        own_low = mask[(word_start + lane) * col_blocks + word];
      }
      if (word_start + lane + 32 >= lo && word_start + lane + 32 < hi) {
        own_high = mask[(word_start + lane + 32) * col_blocks + word];
      }
      uint64_t suppressed = removed[word - first_word];
      uint64_t kept = 0;
      for (int64_t i = lo; i < hi; ++i) {
        const int bit = static_cast<int>(i - word_start);
        const uint64_t own = __shfl_sync(kFullWarp, bit < 32 ? own_low : own_high, bit & 31);
        if (((suppressed >> bit) & 1) == 0) {  // the same in every lane
          kept |= uint64_t(1) << bit;
          suppressed |= own;
        }
      }
      for (int bit = lane; bit < kWordBits; bit += 32) {
        if ((kept >> bit) & 1) {
          const int64_t q = word_start + bit;
          kept_by_rank[rank_of != nullptr ? rank_of[q] : q] = true;
        }
      }
      // The kept boxes' rows, ORed into the later words (one lane per word).
      for (int64_t w = word + 1 + lane; w <= last_word; w += 32) {
        uint64_t rows = 0;
        for (uint64_t rest = kept; rest != 0; rest &= rest - 1) {
          rows |= mask[(word_start + __ffsll(static_cast<long long>(rest)) - 1) * col_blocks + w];
        }
        removed[w - first_word] |= rows;
      }
      __syncwarp();
    }
  }
}

// Greedy NMS of `boxes` ranked by `scores`; `idxs` (or undefined for plain NMS) are the
// categories. Returns the kept indices by decreasing score.
at::Tensor nms_cuda_impl(const at::Tensor& boxes, const at::Tensor& scores,
                         const at::Tensor& idxs, double iou_threshold) {
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor order =
      std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor sweep_order = order, rank_of, categories;
  if (idxs.defined()) {
    rank_of = std::get<1>(at::sort(idxs.index_select(0, order), /*stable=*/true, /*dim=*/0,
                                   /*descending=*/false));
    sweep_order = order.index_select(0, rank_of);
    categories = idxs.index_select(0, sweep_order);
  }
  const at::Tensor sorted_boxes = boxes.index_select(0, sweep_order).contiguous();

  const int64_t col_blocks = (n + kWordBits - 1) / kWordBits;
  TORCH_CHECK(col_blocks <= 65535, "nms (CUDA): at most ", 65535 * kWordBits,
              " boxes, got ", n);
  const int64_t shared_bytes = col_blocks * static_cast<int64_t>(sizeof(uint64_t));
  const int max_shared = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(shared_bytes <= max_shared, "nms (CUDA): too many boxes (", n,
              ") for the sweep's shared memory");
  // The mask is N x col_blocks words, as torchvision's (uninitialised: every word the
  // sweep reads is written).
  at::Tensor mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  at::Tensor kept_by_rank = at::zeros({n}, boxes.options().dtype(at::kBool));
  const int64_t* category_data = categories.defined() ? categories.const_data_ptr<int64_t>()
                                                      : nullptr;

  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_mask_cuda", [&] {
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
    nms_mask_kernel<scalar_t><<<grid, kWordBits, 0, stream>>>(
        sorted_boxes.const_data_ptr<scalar_t>(), category_data, n, col_blocks,
        static_cast<scalar_t>(iou_threshold),
        reinterpret_cast<uint64_t*>(mask.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  if (shared_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(nms_sweep_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
  }
  // Plain NMS is one segment; batched, a block per candidate segment start.
  const unsigned sweep_blocks =
      categories.defined() ? static_cast<unsigned>(std::min<int64_t>(n, 4096)) : 1;
  nms_sweep_kernel<<<sweep_blocks, 32, shared_bytes, stream>>>(
      reinterpret_cast<const uint64_t*>(mask.const_data_ptr<int64_t>()), category_data, n,
      col_blocks, rank_of.defined() ? rank_of.const_data_ptr<int64_t>() : nullptr,
      kept_by_rank.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // The one synchronisation: the number of kept boxes sizes the output.
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
