// Sorting helpers of the CPU kernels: a stable LSD radix sort on the integer score keys of
// ops/score_key.h (the order of torch.sort(descending=True, stable=True)).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops/score_key.h"

namespace fcos_fast {
namespace ops {

// A digit histogram turned in place into each digit's first output position.
inline void counts_to_offsets(std::array<size_t, 256>& count) {
  size_t offset = 0;
  for (auto& c : count) {
    const size_t here = c;
    c = offset;
    offset += here;
  }
}

// Stable LSD radix sort of (keys, values) by ascending key, 8 bits a pass. Passes whose
// digit is the same for every key are skipped (e.g. all but one for small category ids).
template <typename Key, typename Value>
void radix_sort_pairs(std::vector<Key>& keys, std::vector<Value>& values) {
  constexpr int kPasses = sizeof(Key);
  const size_t n = keys.size();
  if (n < 2) return;
  std::vector<std::array<size_t, 256>> counts(kPasses);
  for (auto& c : counts) c.fill(0);
  for (const Key key : keys) {
    for (int pass = 0; pass < kPasses; ++pass) ++counts[pass][(key >> (8 * pass)) & 0xff];
  }
  std::vector<Key> keys_out(n);
  std::vector<Value> values_out(n);
  for (int pass = 0; pass < kPasses; ++pass) {
    auto& count = counts[pass];
    if (count[(keys[0] >> (8 * pass)) & 0xff] == n) continue;
    counts_to_offsets(count);
    for (size_t i = 0; i < n; ++i) {
      const size_t dst = count[(keys[i] >> (8 * pass)) & 0xff]++;
      keys_out[dst] = keys[i];
      values_out[dst] = values[i];
    }
    keys.swap(keys_out);
    values.swap(values_out);
  }
}

// Moves the k smallest of a[0, n) (distinct keys) into a[0, k), in no particular order.
// A quickselect whose partition (Lomuto, with an unconditional swap) has no
// data-dependent branch: on random keys ~3x faster than std::nth_element.
template <typename Key>
void select_smallest(Key* a, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n;
  while (hi - lo > 16) {
    const Key x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];
    // Median of three distinct keys: at least one key on each side of it, so both
    // parts below are non-empty and the range shrinks.
    const Key pivot = std::max(std::min(x, y), std::min(std::max(x, y), z));
    int64_t j = lo;
    for (int64_t i = lo; i < hi; ++i) {
      const Key v = a[i];
      a[i] = a[j];
      a[j] = v;
      j += static_cast<int64_t>(v < pivot);
    }
    // Now a[lo, j) < pivot <= a[j, hi).
    if (k < j) {
      hi = j;
    } else if (k > j) {
      lo = j;
    } else {
      return;
    }
  }
  std::sort(a + lo, a + hi);
}

// Sorts a[0, n) ascending: LSD radix sort, 8 bits a pass, skipping the passes whose digit
// every key shares; `scratch` holds n keys.
template <typename Key>
void radix_sort_keys(Key* a, int64_t n, Key* scratch) {
  constexpr int kPasses = sizeof(Key);
  if (n < 2) return;
  std::array<std::array<size_t, 256>, kPasses> counts{};
  for (int64_t i = 0; i < n; ++i) {
    for (int pass = 0; pass < kPasses; ++pass) ++counts[pass][(a[i] >> (8 * pass)) & 0xff];
  }
  Key* src = a;
  Key* dst = scratch;
  for (int pass = 0; pass < kPasses; ++pass) {
    auto& count = counts[pass];
    if (count[(src[0] >> (8 * pass)) & 0xff] == static_cast<size_t>(n)) continue;
    counts_to_offsets(count);
    for (int64_t i = 0; i < n; ++i) dst[count[(src[i] >> (8 * pass)) & 0xff]++] = src[i];
    std::swap(src, dst);
  }
  if (src != a) std::copy(src, src + n, a);
}

}  // namespace ops
}  // namespace fcos_fast
