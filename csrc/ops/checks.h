// Argument checks shared by the CPU and CUDA kernels of every op. The public Python
// functions validate first (with ValueErrors); these guard direct torch.ops.fcos_fast.*
// calls, so that no input reaches a kernel that could make it read out of bounds.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

namespace fcos_fast {
namespace ops {
namespace checks {

// Every tensor on one device, of type `device_type` (the kernel's dispatch key).
inline void on_one_device(const char* op, c10::DeviceType device_type,
                          std::initializer_list<const at::Tensor*> tensors) {
  const at::Tensor& first = **tensors.begin();
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->device().type() == device_type && t->device() == first.device(), op, " (",
                c10::DeviceTypeName(device_type), "): every input must be on one ",
                c10::DeviceTypeName(device_type), " device, got ", t->device(), " and ",
                first.device());
  }
}

inline void fcos_assign_inputs(c10::DeviceType device_type, const at::Tensor& points,
                               const at::Tensor& lower, const at::Tensor& upper,
                               const at::Tensor& radius, const at::Tensor& gt_boxes,
                               const at::Tensor& num_gt) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 2, "points must be [P, 2], got ",
              points.sizes());
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(2) == 4, "gt_boxes must be [B, G, 4], got ",
              gt_boxes.sizes());
  for (const at::Tensor* t : {&lower, &upper, &radius}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == points.size(0),
                "lower, upper and radius must be [P] with P = points.size(0) = ", points.size(0),
                ", got ", t->sizes());
  }
  TORCH_CHECK(num_gt.dim() == 1 && num_gt.size(0) == gt_boxes.size(0),
              "num_gt must be [B] with B = gt_boxes.size(0), got ", num_gt.sizes());
  TORCH_CHECK(num_gt.scalar_type() == at::kLong, "num_gt must be int64, got ",
              num_gt.scalar_type());
  for (const at::Tensor* t : {&lower, &upper, &radius, &gt_boxes}) {
    TORCH_CHECK(t->scalar_type() == points.scalar_type(),
                "points, lower, upper, radius and gt_boxes must share one dtype");
  }
  on_one_device("fcos_assign", device_type, {&points, &lower, &upper, &radius, &gt_boxes, &num_gt});
}

enum class Reduction { kNone, kMean, kSum };

inline Reduction parse_reduction(std::string_view reduction) {
  if (reduction == "none") return Reduction::kNone;
  if (reduction == "mean") return Reduction::kMean;
  TORCH_CHECK(reduction == "sum", "reduction must be 'none', 'mean' or 'sum', got '",
              std::string(reduction), "'");
  return Reduction::kSum;
}

inline void giou_pair(c10::DeviceType device_type, const at::Tensor& pred,
                      const at::Tensor& target) {
  TORCH_CHECK(pred.dim() == 2 && pred.size(1) == 4, "pred must be [N, 4], got ", pred.sizes());
  TORCH_CHECK(target.sizes() == pred.sizes(), "target must have pred's shape ", pred.sizes(),
              ", got ", target.sizes());
  TORCH_CHECK(target.scalar_type() == pred.scalar_type(), "pred and target must share a dtype");
  on_one_device("giou_loss", device_type, {&pred, &target});
}

// grad_output of giou_loss: [N] for 'none', a single value for 'mean' and 'sum'.
inline void giou_grad_output(c10::DeviceType device_type, const at::Tensor& grad_output,
                             const at::Tensor& pred, Reduction reduction) {
  if (reduction == Reduction::kNone) {
    TORCH_CHECK(grad_output.dim() == 1 && grad_output.size(0) == pred.size(0),
                "grad_output must be [N] for reduction='none', got ", grad_output.sizes());
  } else {
    TORCH_CHECK(grad_output.numel() == 1,
                "grad_output must be a scalar for reduction='mean' or 'sum', got ",
                grad_output.sizes());
  }
  on_one_device("giou_loss_backward", device_type, {&pred, &grad_output});
}

// boxes [N, 4] and scores [N] of one dtype, and (batched_nms) int64 category ids [N].
inline void nms_inputs(c10::DeviceType device_type, const at::Tensor& boxes,
                       const at::Tensor& scores, const at::Tensor* idxs = nullptr) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must be [N, 4], got ",
              boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0),
              "scores must be [N] with N = boxes.size(0), got ", scores.sizes());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(), "boxes and scores must share a dtype");
  if (idxs == nullptr) {
    on_one_device("nms", device_type, {&boxes, &scores});
    return;
  }
  TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0),
              "idxs must be [N] with N = boxes.size(0), got ", idxs->sizes());
  TORCH_CHECK(idxs->scalar_type() == at::kLong, "idxs must be int64, got ",
              idxs->scalar_type());
  on_one_device("batched_nms", device_type, {&boxes, &scores, idxs});
}

inline void per_class_topk_inputs(c10::DeviceType device_type, const at::Tensor& scores,
                                  int64_t k) {
  TORCH_CHECK(scores.dim() == 2, "scores must be [N, C], got ", scores.sizes());
  TORCH_CHECK(k >= 0, "k must be >= 0, got ", k);
  on_one_device("per_class_topk", device_type, {&scores});
}

// batched_nms_padded: boxes [S, L, 4] and scores [S, L] of one dtype, int64 counts [S],
// and optionally int64 category ids [S, L].
inline void batched_nms_padded_inputs(c10::DeviceType device_type, const at::Tensor& boxes,
                                      const at::Tensor& scores, const at::Tensor& counts,
                                      const std::optional<at::Tensor>& idxs) {
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(2) == 4, "boxes must be [S, L, 4], got ",
              boxes.sizes());
  TORCH_CHECK(scores.dim() == 2 && scores.size(0) == boxes.size(0) &&
                  scores.size(1) == boxes.size(1),
              "scores must be [S, L] with [S, L] = boxes.shape[:2], got ", scores.sizes());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(), "boxes and scores must share a dtype");
  TORCH_CHECK(counts.dim() == 1 && counts.size(0) == boxes.size(0),
              "counts must be [S] with S = boxes.size(0), got ", counts.sizes());
  TORCH_CHECK(counts.scalar_type() == at::kLong, "counts must be int64, got ",
              counts.scalar_type());
  if (!idxs.has_value()) {
    on_one_device("batched_nms_padded", device_type, {&boxes, &scores, &counts});
    return;
  }
  TORCH_CHECK(idxs->sizes() == scores.sizes(), "idxs must be [S, L] like scores, got ",
              idxs->sizes());
  TORCH_CHECK(idxs->scalar_type() == at::kLong, "idxs must be int64, got ",
              idxs->scalar_type());
  on_one_device("batched_nms_padded", device_type, {&boxes, &scores, &counts, &*idxs});
}

// sigmoid_focal_loss: logits [N, C] (float, double, BFloat16, Half), int64 labels [N],
// optional weight [N] in the logits' computing dtype.
inline void focal_inputs(c10::DeviceType device_type, const at::Tensor& logits,
                         const at::Tensor& labels, const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(logits.dim() == 2, "logits must be [N, C], got ", logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "logits must be floating, got ",
              logits.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0),
              "labels must be [N] with N = logits.size(0), got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "labels must be int64, got ",
              labels.scalar_type());
  if (!weight.has_value()) {
    on_one_device("sigmoid_focal_loss", device_type, {&logits, &labels});
    return;
  }
  TORCH_CHECK(weight->dim() == 1 && weight->size(0) == logits.size(0),
              "weight must be [N] with N = logits.size(0), got ", weight->sizes());
  TORCH_CHECK(weight->scalar_type() == at::toOpMathType(logits.scalar_type()),
              "weight must be in the computing dtype of the logits, ",
              at::toOpMathType(logits.scalar_type()), ", got ", weight->scalar_type());
  on_one_device("sigmoid_focal_loss", device_type, {&logits, &labels, &*weight});
}

// grad_output of sigmoid_focal_loss: [N, C] for 'none', a single value for 'mean' and 'sum'.
inline void focal_grad_output(c10::DeviceType device_type, const at::Tensor& grad_output,
                              const at::Tensor& logits, Reduction reduction) {
  if (reduction == Reduction::kNone) {
    TORCH_CHECK(grad_output.sizes() == logits.sizes(),
                "grad_output must be [N, C] like logits for reduction='none', got ",
                grad_output.sizes());
  } else {
    TORCH_CHECK(grad_output.numel() == 1,
                "grad_output must be a scalar for reduction='mean' or 'sum', got ",
                grad_output.sizes());
  }
  on_one_device("sigmoid_focal_loss_backward", device_type, {&logits, &grad_output});
}

}  // namespace checks
}  // namespace ops
}  // namespace fcos_fast
