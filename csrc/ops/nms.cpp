// Schemas of fcos_fast::nms and fcos_fast::batched_nms. Kernels: ops/cpu/nms_kernel.cpp,
// ops/cuda/nms_kernel.cu; fake implementations: fcos_fast/ops/nms.py.
//
// Also the internal op fcos_fast::_nms_segment_layout: where each category segment's
// part of the class-aware NMS bitmask lives. The CUDA kernel sizes and indexes its mask
// with it; it is plain ATen, so the same code runs on CPU tensors and the layout (and so
// the mask's size, sum over segments of L * ceil(L / 64) words) is tested without a GPU.
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/nms_layout.h"

namespace fcos_fast {
namespace ops {

namespace {

at::Tensor nms_segment_layout(const at::Tensor& lengths) {
  TORCH_CHECK(lengths.dim() == 1 && lengths.scalar_type() == at::kLong,
              "_nms_segment_layout: segment_lengths must be a 1-D int64 tensor, got ",
              lengths.scalar_type(), " ", lengths.sizes());
  const at::Tensor row_words = lengths.add(kNmsWordBits - 1).div(kNmsWordBits, "floor");
  const at::Tensor sizes =
      at::stack({lengths, lengths.mul(row_words), row_words.mul(row_words), row_words});
  const at::Tensor ends = at::cumsum(sizes, 1);
  // Rows in the order of NmsLayoutRow.
  return at::stack({ends[0].sub(lengths), lengths, row_words, ends[1], ends[2], ends[3]});
}

}  // namespace

}  // namespace ops
}  // namespace fcos_fast

TORCH_LIBRARY_FRAGMENT(fcos_fast, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // [6, S] int64 table of segments of the given lengths (>= 0), rows as NmsLayoutRow in
  // ops/nms_layout.h. Internal: the CUDA batched_nms calls it; tests read it.
  m.def("_nms_segment_layout(Tensor segment_lengths) -> Tensor");
}

TORCH_LIBRARY_IMPL(fcos_fast, CompositeExplicitAutograd, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::_nms_segment_layout"),
         TORCH_FN(fcos_fast::ops::nms_segment_layout));
}
