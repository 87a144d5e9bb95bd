// The greedy sweep of the CUDA NMS kernels (ops/cuda/nms_kernel.cu,
// ops/cuda/batched_nms_padded_kernel.cu): one warp decides one segment of boxes, in sweep
// order, from its IoU bitmask (torchvision's layout: bit j of word w of row i says that box
// i suppresses box 64 * w + j).
#pragma once

#include <algorithm>
#include <cstdint>

#include "ops/nms_layout.h"

namespace fcos_fast {
namespace ops {

constexpr unsigned kFullWarp = 0xffffffffu;
// Removed sets of up to 64 words (segments of up to 4096 boxes: post-processing's
// categories hold at most its k = 1000) sit in shared memory, where the serial chain of
// the sweep reads one each word. A longer segment's sweep is dominated by reading the
// kept boxes' mask rows (up to 64 loads per removed word), so its removed set costs
// little in global memory.
constexpr int64_t kMaxSharedRemovedWords = 64;

// Called by the 32 lanes of one warp: the greedy NMS of a segment of `length` boxes whose
// mask row r is rows[r * words ...], words = ceil(length / 64), calling `keep(position)`
// for each kept position (from the lane that owns it). `removed` holds `words` words of
// scratch (shared or global memory), zeroed here.
//
// For each 64-box word the warp fetches the boxes' own words, decides the 64 boxes serially
// with shuffles (no memory latency in that chain), then ORs the kept boxes' rows into the
// later words of the removed set. Lane l owns the words w = l (mod 32): it alone reads and
// writes them, and hands word w to the other lanes by a shuffle, so the lanes share no
// memory and need no barrier. Addresses depend on `length` only, never on box values.
template <typename KeepFn>
__device__ __forceinline__ void nms_sweep_segment(const uint64_t* __restrict__ rows,
                                                  int64_t length, int64_t words,
                                                  uint64_t* removed, KeepFn&& keep) {
  const int lane = threadIdx.x;
  for (int64_t w = lane; w < words; w += 32) removed[w] = 0;
  for (int64_t word = 0; word < words; ++word) {
    const int64_t base = word * kNmsWordBits;
    const int count = static_cast<int>(std::min(length - base, int64_t(kNmsWordBits)));
    // The boxes' own words: lane l holds those of boxes base + l and base + l + 32.
    const uint64_t own_low = lane < count ? rows[(base + lane) * words + word] : 0;
    const uint64_t own_high = lane + 32 < count ? rows[(base + lane + 32) * words + word] : 0;
    const int owner = static_cast<int>(word & 31);
    uint64_t suppressed = __shfl_sync(kFullWarp, lane == owner ? removed[word] : 0, owner);
    uint64_t kept = 0;
    for (int bit = 0; bit < count; ++bit) {
      const uint64_t own = __shfl_sync(kFullWarp, bit < 32 ? own_low : own_high, bit & 31);
      if (((suppressed >> bit) & 1) == 0) {  // the same in every lane
        kept |= uint64_t(1) << bit;
        suppressed |= own;
      }
    }
    for (int bit = lane; bit < count; bit += 32) {
      if ((kept >> bit) & 1) keep(base + bit);
    }
    // The kept boxes' rows, ORed into the later words, each by its owner.
    if (kept != 0) {
      for (int64_t w = word + 1 + ((lane - word - 1) & 31); w < words; w += 32) {
        uint64_t hits = 0;
        for (uint64_t rest = kept; rest != 0; rest &= rest - 1) {
          const int64_t r = base + __ffsll(static_cast<long long>(rest)) - 1;
          hits |= rows[r * words + w];
        }
        removed[w] |= hits;
      }
    }
  }
}

}  // namespace ops
}  // namespace fcos_fast
