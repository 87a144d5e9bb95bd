// Per-element math of the sigmoid focal loss, shared by the CPU kernels (on SIMD vectors:
// ops/cpu/vectorized/sigmoid_focal_loss_rows.cpp) and the CUDA kernels (on scalars:
// ops/cuda/sigmoid_focal_loss_kernel.cu), so that the CPU tests exercise the formulas the
// GPU runs.
//
// With w = x for a negative class and w = -x for the positive one, torchvision's
// BCE(x, t) is softplus(w) and its 1 - p_t is sigmoid(w) (Lin et al., 2017, eq. 5):
//
//   loss      = alpha_t * softplus(w) * sigmoid(w)^gamma
//   dloss/dw  = alpha_t * sigmoid(w)^gamma * (sigmoid(w) + gamma * softplus(w) * sigmoid(-w))
//
// (sigmoid' = sigmoid(w) sigmoid(-w), so no sigmoid(w)^(gamma - 1), which is infinite at
// saturation for gamma < 1.) Everything comes from one exp, one log and one division:
//
//   e = exp(-|w|),  d = 1 + e,  r = 1 / d,  l = log1p(e) = log(d) - ((d - 1) - e) * r,
//   softplus(w) = max(w, 0) + l,
//   sigmoid(w) = (w >= 0 ? r : e * r),  sigmoid(-w) = (w >= 0 ? e * r : r),
//   log sigmoid(w) = min(w, 0) - l,  sigmoid(w)^gamma = exp(gamma * log sigmoid(w)),
//
// log1p(e) is log(d) corrected for the rounding of 1 + e (d - 1 is exact), accurate to an
// ulp or two for every e in [0, 1] (for e below an ulp of 1, d = 1 and it is e itself);
// it costs a log, where a vectorized log1p costs several (Sleef's, 3.5x its log).
//
// none of which cancels, so confident predictions keep their relative accuracy (where
// torchvision's 1 - p_t rounds to 0). At w = +inf the product softplus * sigmoid(-w) is
// inf * 0; its limit is 0, which is what is used wherever sigmoid(-w) underflows to 0.
// NaN logits give NaN.
//
// The math is written once against a policy M that names the value type M::T (float,
// double, or an at::vec::Vectorized of them) and its operations; ScalarMath below is the
// policy of plain scalars (CUDA, and the CPU's scalar tests).
#pragma once

#include <cmath>
#include <type_traits>

#include "ops/box_math.h"  // FCOS_HOST_DEVICE

namespace fcos_fast {
namespace focal_math {

// The pieces of the loss and of its derivative at one flipped logit w.
template <typename T>
struct Terms {
  T softplus;     // BCE(x, t)
  T sigmoid;      // 1 - p_t
  T sigmoid_neg;  // p_t
  T modulation;   // (1 - p_t)^gamma
};

// How (1 - p_t)^gamma is computed: gamma == 2 (the usual focal loss) as a square,
// gamma == 0 as 1 exactly (exp(0 * -inf) would be NaN), anything else as
// exp(gamma * log sigmoid(w)).
enum class Gamma { kTwo, kZero, kOther };

template <typename M, Gamma kGamma>
FCOS_HOST_DEVICE Terms<typename M::T> terms(typename M::T w, typename M::T gamma) {
  using T = typename M::T;
  const T zero(0), one(1);
  const T e = M::exp(M::neg(M::abs(w)));
  const T d = one + e;
  const T r = one / d;
  const T l = M::log(d) - ((d - one) - e) * r;
  const T er = e * r;
  const auto ahead = M::greater_equal(w, zero);  // false for NaN: then e is NaN too
  Terms<T> t;
  t.softplus = M::max_of(w, zero) + l;
  t.sigmoid = M::select(ahead, r, er);
  t.sigmoid_neg = M::select(ahead, er, r);
  if constexpr (kGamma == Gamma::kTwo) {
    t.modulation = t.sigmoid * t.sigmoid;
  } else if constexpr (kGamma == Gamma::kZero) {
    t.modulation = one;
  } else {
    t.modulation = M::exp(gamma * (M::min_of(w, zero) - l));
  }
  return t;
}

// alpha_t * softplus(w) * sigmoid(w)^gamma.
template <typename M>
FCOS_HOST_DEVICE typename M::T loss(const Terms<typename M::T>& t, typename M::T alpha_t) {
  return alpha_t * (t.softplus * t.modulation);
}

// d loss / d w (not yet signed for x: d w / d x is -1 on the positive class).
template <typename M>
FCOS_HOST_DEVICE typename M::T grad_w(const Terms<typename M::T>& t, typename M::T alpha_t,
                                      typename M::T gamma) {
  using T = typename M::T;
  const T zero(0);
  const T tail = M::select(M::equal(t.sigmoid_neg, zero), zero, t.softplus * t.sigmoid_neg);
  return alpha_t * (t.modulation * (t.sigmoid + gamma * tail));
}

// The policy of plain float / double scalars, host and device.
template <typename Scalar>
struct ScalarMath {
  using T = Scalar;
  using Mask = bool;

  static FCOS_HOST_DEVICE T exp(T x) {
    if constexpr (std::is_same_v<T, float>) {
      return ::expf(x);
    } else {
      return ::exp(x);
    }
  }
  static FCOS_HOST_DEVICE T log(T x) {
    if constexpr (std::is_same_v<T, float>) {
      return ::logf(x);
    } else {
      return ::log(x);
    }
  }
  static FCOS_HOST_DEVICE T abs(T x) { return box_math::abs_of(x); }
  static FCOS_HOST_DEVICE T neg(T x) { return -x; }
  static FCOS_HOST_DEVICE T max_of(T a, T b) { return box_math::max_of(a, b); }
  static FCOS_HOST_DEVICE T min_of(T a, T b) { return box_math::min_of(a, b); }
  static FCOS_HOST_DEVICE bool greater_equal(T a, T b) { return a >= b; }
  static FCOS_HOST_DEVICE bool equal(T a, T b) { return a == b; }
  static FCOS_HOST_DEVICE T select(bool mask, T a, T b) { return mask ? a : b; }
};

}  // namespace focal_math
}  // namespace fcos_fast
