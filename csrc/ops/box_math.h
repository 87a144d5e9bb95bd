// Per-box math shared by the C++ CPU kernels (ops/cpu/*_kernel.cpp) and the CUDA kernels
// (ops/cuda/*_kernel.cu), so that the CPU tests exercise the arithmetic the GPU runs.
//
// The functions are written as straight-line code: every value is computed
// unconditionally and `cond ? a : b` only selects between computed values, so that the
// compiler if-converts (and vectorises) them instead of branching on data-dependent,
// unpredictable comparisons (GCC will not speculate a division past a branch).
//
// Every function reproduces the reference backend (fcos_fast/ops/reference/*.py)
// operation by operation, in the same order, so that results are bitwise identical to
// it in float32 and float64:
//   * max_of / min_of are torch.maximum / torch.minimum (NaN propagates), not std::max;
//   * no expression relies on a particular association, and the build disables FMA
//     contraction (-ffp-contract=off, nvcc --fmad=false): a fused a*b+c rounds once where
//     PyTorch rounds twice.
// Boxes are (x1, y1, x2, y2); points are (x, y).
#pragma once

// Always inlined: the CPU loops only vectorise with the math inlined into them (GCC
// otherwise keeps the large giou_loss_grad out of line, and scalar).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FCOS_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FCOS_HOST_DEVICE inline __attribute__((always_inline))
#else
#define FCOS_HOST_DEVICE inline
#endif

namespace fcos_fast {
namespace box_math {

template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

// torch.maximum / torch.minimum: NaN if either side is NaN.
template <typename T>
FCOS_HOST_DEVICE T max_of(T a, T b) {
  return ((a != a) | (a > b)) ? a : b;
}

template <typename T>
FCOS_HOST_DEVICE T min_of(T a, T b) {
  return ((a != a) | (a < b)) ? a : b;
}

// Tensor.clamp(min=0): NaN stays NaN.
template <typename T>
FCOS_HOST_DEVICE T clamp_min_zero(T a) {
  return a < T(0) ? T(0) : a;
}

template <typename T>
FCOS_HOST_DEVICE T abs_of(T a) {
  return a < T(0) ? -a : a;
}

template <typename T>
FCOS_HOST_DEVICE T box_area(T x1, T y1, T x2, T y2) {
  return (x2 - x1) * (y2 - y1);
}

// ------------------------------------------------------------------------------ NMS

// IoU of boxes a and b with precomputed areas, in torchvision's CPU-kernel arithmetic
// (reference/nms.py `_iou_with`). Two empty boxes give 0/0 = NaN, which compares false
// against any threshold and so suppresses nothing.
template <typename T>
FCOS_HOST_DEVICE T nms_iou(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2,
                                  T by2, T area_b) {
  const T w = clamp_min_zero(min_of(ax2, bx2) - max_of(ax1, bx1));
  const T h = clamp_min_zero(min_of(ay2, by2) - max_of(ay1, by1));
  const T inter = w * h;
  return inter / (area_a + area_b - inter);
}

// ------------------------------------------------------------------------------ GIoU loss

// Gradient of torch.maximum(a, b) / torch.minimum(a, b) with respect to one argument, as
// PyTorch's autograd defines it: split half/half on a tie, zero to the losing side.
// (A NaN comparison is neither a tie nor a loss: both sides get the full gradient.)
template <typename T>
FCOS_HOST_DEVICE T max_grad_self(T self, T other, T grad) {
  const T half = grad / T(2);
  return self == other ? half : (self < other ? T(0) : grad);
}

template <typename T>
FCOS_HOST_DEVICE T max_grad_other(T self, T other, T grad) {
  const T half = grad / T(2);
  return self == other ? half : (self > other ? T(0) : grad);
}

template <typename T>
FCOS_HOST_DEVICE T min_grad_self(T self, T other, T grad) {
  const T half = grad / T(2);
  return self == other ? half : (self > other ? T(0) : grad);
}

template <typename T>
FCOS_HOST_DEVICE T min_grad_other(T self, T other, T grad) {
  const T half = grad / T(2);
  return self == other ? half : (self < other ? T(0) : grad);
}

// Gradients of one axis's sides (lo = x1 or y1, hi = x2 or y2) of the predicted and the
// target box, given the gradients of the boxes' extents along that axis (w = hi - lo),
// of the intersection's extent (min(hi) - max(lo)) and of the enclosing box's extent
// (max(hi) - min(lo)).
template <typename T>
FCOS_HOST_DEVICE void giou_side_grads(T p_lo, T p_hi, T t_lo, T t_hi, T grad_p_extent,
                                      T grad_t_extent, T grad_inter, T grad_enclose,
                                      T& grad_p_lo, T& grad_p_hi, T& grad_t_lo, T& grad_t_hi) {
  grad_p_lo = -grad_p_extent + max_grad_self(p_lo, t_lo, -grad_inter) +
              min_grad_self(p_lo, t_lo, -grad_enclose);
  grad_t_lo = -grad_t_extent + max_grad_other(p_lo, t_lo, -grad_inter) +
              min_grad_other(p_lo, t_lo, -grad_enclose);
  grad_p_hi = grad_p_extent + min_grad_self(p_hi, t_hi, grad_inter) +
              max_grad_self(p_hi, t_hi, grad_enclose);
  grad_t_hi = grad_t_extent + min_grad_other(p_hi, t_hi, grad_inter) +
              max_grad_other(p_hi, t_hi, grad_enclose);
}

// 1 - GIoU(p, t), reference/giou_loss.py line by line (torchvision's formula).
template <typename T>
FCOS_HOST_DEVICE T giou_loss_value(const Box<T>& p, const Box<T>& t, T eps) {
  const T inter_w = min_of(p.x2, t.x2) - max_of(p.x1, t.x1);
  const T inter_h = min_of(p.y2, t.y2) - max_of(p.y1, t.y1);
  const bool overlaps = (inter_w > T(0)) & (inter_h > T(0));
  const T inter_area = inter_w * inter_h;
  const T inter = overlaps ? inter_area : T(0);
  const T uni = box_area(p.x1, p.y1, p.x2, p.y2) + box_area(t.x1, t.y1, t.x2, t.y2) - inter;
  const T iou = inter / (uni + eps);
  const T enclose = (max_of(p.x2, t.x2) - min_of(p.x1, t.x1)) *
                    (max_of(p.y2, t.y2) - min_of(p.y1, t.y1));
  return T(1) - (iou - (enclose - uni) / (enclose + eps));
}

// Gradients of `grad * giou_loss_value(p, t, eps)` with respect to both boxes: reverse
// mode through the same graph, with each node's backward formula as in PyTorch's
// derivatives.yaml (div: -g * ((a / b) / b); where(): zero where the mask is false;
// maximum/minimum: split on ties). Equal to autograd on the reference up to the order
// in which autograd happens to accumulate a variable's several contributions.
template <typename T>
FCOS_HOST_DEVICE void giou_loss_grad(const Box<T>& p, const Box<T>& t, T eps, T grad,
                                     Box<T>& grad_p, Box<T>& grad_t) {
  // Forward, keeping the intermediates.
  const T inter_w = min_of(p.x2, t.x2) - max_of(p.x1, t.x1);
  const T inter_h = min_of(p.y2, t.y2) - max_of(p.y1, t.y1);
  const bool overlaps = (inter_w > T(0)) & (inter_h > T(0));
  const T inter_area = inter_w * inter_h;
  const T inter = overlaps ? inter_area : T(0);
  const T pw = p.x2 - p.x1, ph = p.y2 - p.y1;
  const T tw = t.x2 - t.x1, th = t.y2 - t.y1;
  const T uni = pw * ph + tw * th - inter;
  const T uni_eps = uni + eps;
  const T enclose_w = max_of(p.x2, t.x2) - min_of(p.x1, t.x1);
  const T enclose_h = max_of(p.y2, t.y2) - min_of(p.y1, t.y1);
  const T enclose = enclose_w * enclose_h;
  const T gap = enclose - uni;
  const T enclose_eps = enclose + eps;

  // loss = 1 - (iou - gap / enclose_eps)
  const T grad_iou = -grad;
  const T grad_ratio = grad;
  // ratio = gap / enclose_eps
  const T grad_gap = grad_ratio / enclose_eps;
  const T grad_enclose_eps = -grad_ratio * ((gap / enclose_eps) / enclose_eps);
  // iou = inter / uni_eps
  const T grad_inter_div = grad_iou / uni_eps;
  const T grad_uni_eps = -grad_iou * ((inter / uni_eps) / uni_eps);
  // uni_eps = uni + eps; gap = enclose - uni; enclose_eps = enclose + eps
  const T grad_uni = grad_uni_eps - grad_gap;
  const T grad_enclose = grad_gap + grad_enclose_eps;
  // uni = (area_p + area_t) - inter
  const T grad_inter = grad_inter_div - grad_uni;
  // inter = where(overlaps, inter_w * inter_h, 0)
  const T grad_product = overlaps ? grad_inter : T(0);
  const T grad_inter_w = grad_product * inter_h;
  const T grad_inter_h = grad_product * inter_w;
  // enclose = enclose_w * enclose_h; areas = w * h
  const T grad_enclose_w = grad_enclose * enclose_h;
  const T grad_enclose_h = grad_enclose * enclose_w;
  const T grad_pw = grad_uni * ph, grad_ph = grad_uni * pw;
  const T grad_tw = grad_uni * th, grad_th = grad_uni * tw;

  giou_side_grads(p.x1, p.x2, t.x1, t.x2, grad_pw, grad_tw, grad_inter_w, grad_enclose_w,
                  grad_p.x1, grad_p.x2, grad_t.x1, grad_t.x2);
  giou_side_grads(p.y1, p.y2, t.y1, t.y2, grad_ph, grad_th, grad_inter_h, grad_enclose_h,
                  grad_p.y1, grad_p.y2, grad_t.y1, grad_t.y2);
}

// ------------------------------------------------------------------------------ FCOS

// Whether point (x, y) with scale range (lower, upper) and center-sampling radius matches
// the box (x1, y1, x2, y2) of center (cx, cy) = ((x1 + x2) / 2, (y1 + y2) / 2): the rule of
// torchvision's FCOS head, in reference/fcos_assign.py's arithmetic.
template <typename T>
FCOS_HOST_DEVICE bool fcos_point_matches(T x, T y, T lower, T upper, T radius, T x1,
                                                T y1, T x2, T y2, T cx, T cy) {
  const T left = x - x1, top = y - y1, right = x2 - x, bottom = y2 - y;
  const T nearest = min_of(min_of(left, top), min_of(right, bottom));
  const T farthest = max_of(max_of(left, top), max_of(right, bottom));
  const bool near_center = max_of(abs_of(x - cx), abs_of(y - cy)) < radius;
  return near_center & (nearest > T(0)) & (farthest > lower) & (farthest < upper);
}

template <typename T>
FCOS_HOST_DEVICE T box_center(T lo, T hi) {
  return (lo + hi) / T(2);
}

}  // namespace box_math
}  // namespace fcos_fast
