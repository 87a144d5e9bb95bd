// Per-class candidate selection of the CPU top-k kernels (ops/cpu/per_class_topk_kernel.cpp,
// ops/cpu/per_class_topk_padded_kernel.cpp): for every class, the best min(k, N) points
// scoring above the threshold, sorted by (score descending, point index ascending).
//
// One pass over the [N, C] scores in memory order; threads take contiguous ranges of
// classes, so each reads its part of every row (no strided per-class column walks).
// A candidate is one integer, (descending score key << bits) | point index, so the
// output order is plain integer order: selection and sorting run on integers with no
// comparator and no ties. Each class keeps a buffer of candidates and a cut-off score: a point
// enters when its score beats the cut-off; when the buffer is full it is pruned to its
// best k and the cut-off rises to the k-th best score. Points arrive in increasing
// index, so a later point that only ties the k-th score ranks below it and stays out.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/cpu/sort_keys.h"

namespace fcos_fast {
namespace ops {

// Candidate keys: the score key in the high half, the point index in the low half.
template <typename scalar_t>
struct CandidateKey;

template <>
struct CandidateKey<float> {
  using type = uint64_t;
};

template <>
struct CandidateKey<double> {
  using type = unsigned __int128;
};

template <typename scalar_t>
using Candidate = typename CandidateKey<scalar_t>::type;

template <typename scalar_t>
Candidate<scalar_t> make_candidate(scalar_t score, int64_t point) {
  using Key = Candidate<scalar_t>;
  constexpr int shift = 8 * sizeof(Key) - 8 * sizeof(ScoreKey<scalar_t>);
  return (Key(descending_key(score)) << shift) | Key(static_cast<uint32_t>(point));
}

template <typename scalar_t>
int64_t point_of(Candidate<scalar_t> candidate) {
  return static_cast<int64_t>(static_cast<uint32_t>(candidate));
}

// Class range [class_begin, class_end): the best k candidates of each class, sorted, in
// `buffer[c * stride ...]`, their number in `count[c]`.
template <typename scalar_t>
void select_classes(const scalar_t* scores, int64_t num_points, int64_t num_classes, int64_t k,
                    scalar_t threshold, int64_t capacity, int64_t class_begin,
                    int64_t class_end, Candidate<scalar_t>* buffer, int64_t* count) {
  const int64_t width = class_end - class_begin;
  const int64_t stride = capacity + 1;  // a spare slot: the unconditional write stays in bounds
  std::vector<scalar_t> cut(width, threshold);
  // uint32_t (capacity <= N < 2^32), not int64_t: a type that cannot alias the uint64_t
  // candidate stores, so the compiler need not reload the counts after every store.
  std::vector<uint32_t> filled(width, 0);
  Candidate<scalar_t>* base = buffer + class_begin * stride;

  // Keep the best k of class c's buffer and raise its cut-off to the k-th best score.
  auto prune = [&](int64_t c) {
    Candidate<scalar_t>* b = base + c * stride;
    select_smallest(b, filled[c], k);
    filled[c] = k;
    // The k-th best: the largest key kept.
    cut[c] = scores[point_of<scalar_t>(*std::max_element(b, b + k)) * num_classes +
                    class_begin + c];
  };

  for (int64_t n = 0; n < num_points; ++n) {
    const scalar_t* row = scores + n * num_classes + class_begin;
    for (int64_t c = 0; c < width; ++c) {
      const scalar_t s = row[c];
      // Branch-free: always write, advance only for a candidate (NaN never is one).
      base[c * stride + filled[c]] = make_candidate(s, n);
      filled[c] += static_cast<uint32_t>(s > cut[c]);
      if (filled[c] == capacity) prune(c);
    }
  }
  std::vector<Candidate<scalar_t>> scratch(capacity);
  for (int64_t c = 0; c < width; ++c) {
    Candidate<scalar_t>* b = base + c * stride;
    if (filled[c] > k) select_smallest(b, filled[c], k);
    filled[c] = static_cast<uint32_t>(std::min<int64_t>(filled[c], k));
    radix_sort_keys(b, filled[c], scratch.data());
    count[class_begin + c] = filled[c];
  }
}

// The selection of every class: class c's count[c] best candidates, sorted best first,
// at buffer[c * stride ...].
template <typename scalar_t>
struct ClassSelection {
  int64_t stride = 0;
  std::vector<Candidate<scalar_t>> buffer;
  std::vector<int64_t> count;

  // The point index of class c's i-th best candidate (i < count[c]).
  int64_t point(int64_t c, int64_t i) const { return point_of<scalar_t>(buffer[c * stride + i]); }
};

// `scores` is a contiguous [N, C] array (N < 2^32); `k` is at most N.
template <typename scalar_t>
ClassSelection<scalar_t> select_per_class(const scalar_t* scores, int64_t num_points,
                                          int64_t num_classes, int64_t k, double score_thresh) {
  ClassSelection<scalar_t> selection;
  selection.count.assign(num_classes, 0);
  if (k == 0) return selection;
  // A buffer of ~4k makes each prune's O(buffer) cost pay for >= 3k new candidates.
  const int64_t capacity = std::min(num_points, std::max<int64_t>(4 * k, 1024));
  selection.stride = capacity + 1;
  selection.buffer.resize(num_classes * selection.stride);
  // The threshold in the scores' dtype, as the reference's tensor comparison does.
  const scalar_t threshold = static_cast<scalar_t>(score_thresh);
  // Threads only for >= 64k scores a task: below, one thread is faster.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(num_points, 1));
  at::parallel_for(0, num_classes, grain, [&](int64_t begin, int64_t end) {
    select_classes(scores, num_points, num_classes, k, threshold, capacity, begin, end,
                   selection.buffer.data(), selection.count.data());
  });
  return selection;
}

}  // namespace ops
}  // namespace fcos_fast
