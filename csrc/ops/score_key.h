// Integer keys that order floating-point scores the way
// torch.sort(descending=True, stable=True) does, for the CPU sorts (ops/cpu/sort_keys.h)
// and the CUDA ones alike, so that every backend breaks ties and places NaN the same way.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ops/box_math.h"  // FCOS_HOST_DEVICE

namespace fcos_fast {
namespace ops {

// The unsigned integer type of a score's key: as wide as the score.
template <typename scalar_t>
using ScoreKey = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;

// A key whose ascending order is the descending order of torch.sort: NaN first (every NaN
// alike), then +inf down to -inf, with -0.0 equal to +0.0. Only NaN has the key 0.
template <typename scalar_t>
FCOS_HOST_DEVICE ScoreKey<scalar_t> descending_key(scalar_t value) {
  using Key = ScoreKey<scalar_t>;
  constexpr Key sign = Key(1) << (8 * sizeof(Key) - 1);
  const scalar_t unsigned_zero = value == scalar_t(0) ? scalar_t(0) : value;
  Key bits;
  memcpy(&bits, &unsigned_zero, sizeof(bits));
  const Key ascending = (bits & sign) ? ~bits : (bits | sign);
  return value != value ? Key(0) : Key(~ascending);
}

}  // namespace ops
}  // namespace fcos_fast
