// Layout of the class-aware NMS bitmask, one block of it per category segment.
//
// The boxes are sorted by (category, score), so each category is one contiguous segment
// of the sweep order. A segment of L boxes owns an L x ceil(L / 64) block of 64-bit
// words: bit j of word (i, j / 64) says whether its box i suppresses its box j. The
// blocks are stored one after the other, so the whole mask is
// sum over segments of L * ceil(L / 64) words, never N * ceil(N / 64).
//
// fcos_fast::_nms_segment_layout (ops/nms.cpp) turns segment lengths into an int64 table
// [kNmsLayoutRows, S] with these rows; "end" rows are inclusive prefix sums, so a row's
// total is its last entry and segment s begins at end[s] - own size.
#pragma once

#include <cstdint>

namespace fcos_fast {
namespace ops {

constexpr int kNmsWordBits = 64;  // boxes per mask word

enum NmsLayoutRow : int {
  kNmsStart = 0,       // first sweep position of the segment
  kNmsLength = 1,      // L, boxes in the segment
  kNmsRowWords = 2,    // ceil(L / 64): words per mask row, and 64-box blocks per segment
  kNmsMaskEnd = 3,     // prefix sum of L * ceil(L / 64): mask words up to this segment
  kNmsTileEnd = 4,     // prefix sum of ceil(L / 64)^2: 64 x 64 tiles up to this segment
  kNmsRowWordsEnd = 5, // prefix sum of ceil(L / 64): removed-set words up to this segment
  kNmsLayoutRows = 6,
};

}  // namespace ops
}  // namespace fcos_fast
