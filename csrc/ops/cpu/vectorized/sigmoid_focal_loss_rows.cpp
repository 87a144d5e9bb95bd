// The row kernel of the CPU sigmoid focal loss, compiled once per CPU capability (see
// sigmoid_focal_loss_rows.h): at::vec::Vectorized<float> is 16 lanes of AVX512 here,
// 8 of AVX2, or a plain array, with exp and log from Sleef (ATen's own, 1 ulp).
//
// The [N, C] logits are walked as one flat array, a vector of lanes at a time, so that no
// lane idles when C is not a multiple of the vector width (C = 20, 3). A vector spans one
// or more rows; for each of them the positive class (one lane at most) and the row's
// weight are blended in. The math is ops/focal_math.h, the same as the CUDA kernels'.
//
// Sums: each lane adds its losses in the computing dtype over at most kBlock vectors, and
// those partial sums are added in double in lane order; the caller adds the calls' sums in
// the order of their rows. Fixed chunks make the result independent of the threads.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>

#include "ops/cpu/vectorized/sigmoid_focal_loss_rows.h"
#include "ops/focal_math.h"

#ifndef CPU_CAPABILITY
#error "compiled by setup.py once per CPU capability, with -DCPU_CAPABILITY=<name>"
#endif

namespace fcos_fast {
namespace ops {
namespace focal_cpu {
namespace CPU_CAPABILITY {

namespace {

using focal_math::Gamma;

// focal_math's policy on SIMD vectors.
template <typename V>
struct VecMath {
  using T = V;
  using Mask = V;  // lanes of all ones or all zeros
  static T exp(const T& x) { return x.exp(); }
  static T log(const T& x) { return x.log(); }
  static T abs(const T& x) { return x.abs(); }
  static T neg(const T& x) { return x.neg(); }
  static T max_of(const T& a, const T& b) { return at::vec::maximum(a, b); }
  static T min_of(const T& a, const T& b) { return at::vec::minimum(a, b); }
  static Mask greater_equal(const T& a, const T& b) { return a >= b; }
  static Mask equal(const T& a, const T& b) { return a == b; }
  static T select(const Mask& mask, const T& a, const T& b) { return T::blendv(b, a, mask); }
};

// Loads and stores of `count` <= lanes elements of scalar_t as vectors of its opmath type.
template <typename scalar_t>
struct Io {
  using opmath_t = at::opmath_type<scalar_t>;
  using V = at::vec::Vectorized<opmath_t>;
  static constexpr int64_t kLanes = V::size();

  static V load(const scalar_t* data, int64_t count) {
    if constexpr (std::is_same_v<scalar_t, opmath_t>) {
      return count == kLanes ? V::loadu(data) : V::loadu(data, count);
    } else {  // BFloat16, Half: converted in registers
      V out;
      if (count == kLanes) {
        at::vec::load_to_float<scalar_t>(data, out);
      } else {
        scalar_t padded[kLanes] = {};
        std::memcpy(padded, data, count * sizeof(scalar_t));
        at::vec::load_to_float<scalar_t>(padded, out);
      }
      return out;
    }
  }

  static void store(scalar_t* data, const V& value, int64_t count) {
    if constexpr (std::is_same_v<scalar_t, opmath_t>) {
      value.store(data, count);
    } else {  // rounded to nearest even, once
      at::vec::convert_from_float<scalar_t>(value, value).store(data, count);
    }
  }
};

// Vectors summed per lane before the lanes go into the double sum.
constexpr int kBlock = 64;

template <typename scalar_t, Gamma kGamma, bool kGrad>
double rows(const Job& job, int64_t row_begin, int64_t row_end) {
  using IoT = Io<scalar_t>;
  using opmath_t = typename IoT::opmath_t;
  using V = typename IoT::V;
  using M = VecMath<V>;
  constexpr int64_t kLanes = IoT::kLanes;

  const int64_t classes = job.num_classes;
  const scalar_t* logits = static_cast<const scalar_t*>(job.logits);
  const opmath_t* weight = static_cast<const opmath_t*>(job.weight);
  const opmath_t* upstream = static_cast<const opmath_t*>(job.grad_output);
  opmath_t* loss_out = static_cast<opmath_t*>(job.loss);
  scalar_t* grad_out = static_cast<scalar_t*>(job.grad);
  const bool want_loss = job.reduce || loss_out != nullptr;

  const V zero(opmath_t(0)), one(opmath_t(1));
  const V iota = V::arange(opmath_t(0), opmath_t(1));
  const V gamma(static_cast<opmath_t>(job.gamma));
  const V alpha_positive(static_cast<opmath_t>(job.alpha_positive));
  const V alpha_negative(static_cast<opmath_t>(job.alpha_negative));
  const V grad_scale(static_cast<opmath_t>(job.grad_scale));

  const int64_t end = row_end * classes;
  // The first row overlapping the current vector, and the flat index of its start.
  int64_t row = row_begin, row_start = row_begin * classes;
  V block_sum = zero;
  int block_count = 0;
  double sum = 0;
  const auto flush = [&] {
    opmath_t lanes[kLanes];
    block_sum.store(lanes);
    for (int64_t i = 0; i < kLanes; ++i) sum += lanes[i];
    block_sum = zero;
    block_count = 0;
  };

  for (int64_t k = row_begin * classes; k < end; k += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, end - k);
    const V x = IoT::load(logits + k, count);

    // The positive lane (at most one) and the weight of each row in this vector.
    V positive = zero;
    V row_weight = one;
    for (int64_t r = row, start = row_start; start < k + count; ++r, start += classes) {
      const int64_t label = job.labels[r];
      const int64_t lane = start + label - k;
      if (label >= 0 && label < classes && lane >= 0 && lane < count) {
        positive = positive | (iota == V(static_cast<opmath_t>(lane)));
      }
      if (weight != nullptr) {
        const V first(static_cast<opmath_t>(std::max<int64_t>(start - k, 0)));
        const V last(static_cast<opmath_t>(std::min<int64_t>(start + classes - k, kLanes)));
        row_weight = V::blendv(row_weight, V(weight[r]), (iota >= first) & (iota < last));
      }
    }
    while (row_start + classes <= k + kLanes) {  // the row holding the next vector's start
      row_start += classes;
      ++row;
    }

    const V w = V::blendv(x, x.neg(), positive);
    const V alpha_t = V::blendv(alpha_negative, alpha_positive, positive);
    const auto terms = focal_math::terms<M, kGamma>(w, gamma);

    if (want_loss) {
      V loss = focal_math::loss<M>(terms, alpha_t);
      if (weight != nullptr) loss = loss * row_weight;
      if (job.reduce) {
        if (count < kLanes) loss = V::blendv(zero, loss, iota < V(static_cast<opmath_t>(count)));
        block_sum = block_sum + loss;
        if (++block_count == kBlock) flush();
      } else {
        loss.store(loss_out + k, count);
      }
    }
    if constexpr (kGrad) {
      V grad = focal_math::grad_w<M>(terms, alpha_t, gamma);
      grad = V::blendv(grad, grad.neg(), positive);
      if (weight != nullptr) grad = grad * row_weight;
      grad = upstream != nullptr ? grad * V::loadu(upstream + k, count) : grad * grad_scale;
      IoT::store(grad_out + k, grad, count);
    }
  }
  if (block_count > 0) flush();
  return sum;
}

template <typename scalar_t>
double rows_of(const Job& job, int64_t row_begin, int64_t row_end) {
  const bool grad = job.grad != nullptr;
  if (job.gamma == 2.0) {
    return grad ? rows<scalar_t, Gamma::kTwo, true>(job, row_begin, row_end)
                : rows<scalar_t, Gamma::kTwo, false>(job, row_begin, row_end);
  }
  if (job.gamma == 0.0) {
    return grad ? rows<scalar_t, Gamma::kZero, true>(job, row_begin, row_end)
                : rows<scalar_t, Gamma::kZero, false>(job, row_begin, row_end);
  }
  return grad ? rows<scalar_t, Gamma::kOther, true>(job, row_begin, row_end)
              : rows<scalar_t, Gamma::kOther, false>(job, row_begin, row_end);
}

}  // namespace

double sigmoid_focal_loss_rows(const Job& job, int64_t row_begin, int64_t row_end) {
  switch (job.dtype) {
    case c10::ScalarType::Float:
      return rows_of<float>(job, row_begin, row_end);
    case c10::ScalarType::Double:
      return rows_of<double>(job, row_begin, row_end);
    case c10::ScalarType::BFloat16:
      return rows_of<c10::BFloat16>(job, row_begin, row_end);
    case c10::ScalarType::Half:
      return rows_of<c10::Half>(job, row_begin, row_end);
    default:
      return 0;  // the op checked the dtype
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace focal_cpu
}  // namespace ops
}  // namespace fcos_fast
