// fcos_fast::sigmoid_focal_loss and fcos_fast::sigmoid_focal_loss_backward on CPU.
//
// One pass over the [N, C] logits computes the loss (stored, or reduced) and, when asked
// (with_grad), the gradient of the reduced loss in the same pass; the backward op is the
// same pass with the upstream gradient folded in. Nothing of size [N, C] is allocated but
// the outputs: the one-hot target is never made (each row's positive class is compared
// with its label), and half-precision logits are converted in registers.
//
// The row kernel is vectorized/sigmoid_focal_loss_rows.cpp, built per CPU capability;
// this file picks the capability ATen runs with, splits the rows into fixed chunks for
// at::parallel_for, and adds the chunks' sums in order, so that a reduced loss does not
// depend on the number of threads (bitwise).
#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "ops/checks.h"
#include "ops/cpu/vectorized/sigmoid_focal_loss_rows.h"

namespace fcos_fast {
namespace ops {

namespace {

using checks::Reduction;
using focal_cpu::Job;
using focal_cpu::RowsFn;

// Elements per chunk of rows (one task, one partial sum): fixed, so the summation order
// is too.
constexpr int64_t kChunkElements = 1 << 15;

struct Capability {
  const char* name;
  RowsFn rows;
};

// The capability ATen runs with here (ATEN_CPU_CAPABILITY lowers it), among those built.
Capability capability() {
  static const Capability chosen = [] {
    const std::string aten = at::get_cpu_capability();
#if defined(FCOS_FAST_CPU_CAPABILITY_AVX512)
    if (aten == "AVX512") return Capability{"AVX512", &focal_cpu::AVX512::sigmoid_focal_loss_rows};
#endif
#if defined(FCOS_FAST_CPU_CAPABILITY_AVX2)
    if (aten == "AVX512" || aten == "AVX2") {
      return Capability{"AVX2", &focal_cpu::AVX2::sigmoid_focal_loss_rows};
    }
#endif
    return Capability{"DEFAULT", &focal_cpu::DEFAULT::sigmoid_focal_loss_rows};
  }();
  return chosen;
}

// Runs the job over every row in fixed chunks; the sum of the losses when job.reduce.
double run(const Job& job, int64_t num_rows) {
  if (num_rows == 0 || job.num_classes == 0) return 0;
  const RowsFn rows = capability().rows;
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkElements / job.num_classes);
  const int64_t num_chunks = (num_rows + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<double> partial(job.reduce ? num_chunks : 0, 0.0);
  at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first = chunk * rows_per_chunk;
      const double sum = rows(job, first, std::min(num_rows, first + rows_per_chunk));
      if (job.reduce) partial[chunk] = sum;
    }
  });
  double total = 0;
  for (const double s : partial) total += s;
  return total;
}

Job make_job(const at::Tensor& logits, const at::Tensor& labels,
             const c10::optional<at::Tensor>& weight, double alpha, double gamma) {
  Job job{};
  job.dtype = logits.scalar_type();
  job.logits = logits.const_data_ptr();
  job.labels = labels.const_data_ptr<int64_t>();
  job.weight = weight.has_value() ? weight->const_data_ptr() : nullptr;
  job.num_classes = logits.size(1);
  // alpha < 0: no weighting (torchvision's -1).
  job.alpha_positive = alpha >= 0 ? alpha : 1.0;
  job.alpha_negative = alpha >= 0 ? 1.0 - alpha : 1.0;
  job.gamma = gamma;
  job.grad_scale = 1.0;
  return job;
}

std::tuple<at::Tensor, at::Tensor> sigmoid_focal_loss_cpu(
    const at::Tensor& logits_in, const at::Tensor& labels_in,
    const c10::optional<at::Tensor>& weight_in, double alpha, double gamma,
    c10::string_view reduction_name, bool with_grad) {
  checks::focal_inputs(c10::DeviceType::CPU, logits_in, labels_in, weight_in);
  const Reduction reduction = checks::parse_reduction(reduction_name);
  const at::Tensor logits = logits_in.contiguous(), labels = labels_in.contiguous();
  const c10::optional<at::Tensor> weight =
      weight_in.has_value() ? c10::optional<at::Tensor>(weight_in->contiguous()) : c10::nullopt;
  const int64_t n = logits.size(0), c = logits.size(1);
  const auto compute = at::toOpMathType(logits.scalar_type());

  at::Tensor loss = reduction == Reduction::kNone ? at::empty({n, c}, logits.options().dtype(compute))
                                                  : at::empty({}, logits.options().dtype(compute));
  at::Tensor grad = with_grad ? at::empty_like(logits) : at::empty({0}, logits.options());
  Job job = make_job(logits, labels, weight, alpha, gamma);
  job.reduce = reduction != Reduction::kNone;
  job.loss = job.reduce ? nullptr : loss.mutable_data_ptr();
  job.grad = with_grad ? grad.mutable_data_ptr() : nullptr;
  // The gradient of the mean divides by N * C, as autograd's mean backward does.
  job.grad_scale = reduction == Reduction::kMean ? 1.0 / static_cast<double>(n * c) : 1.0;
  double total = run(job, n);
  if (job.reduce) {
    // The mean of no elements is NaN (0 / 0), as torch's mean and torchvision's loss.
    if (reduction == Reduction::kMean) total /= static_cast<double>(n * c);
    loss.fill_(total);
  }
  return {loss, grad};
}

at::Tensor sigmoid_focal_loss_backward_cpu(const at::Tensor& grad_output_in,
                                           const at::Tensor& logits_in,
                                           const at::Tensor& labels_in,
                                           const c10::optional<at::Tensor>& weight_in,
                                           double alpha, double gamma,
                                           c10::string_view reduction_name) {
  checks::focal_inputs(c10::DeviceType::CPU, logits_in, labels_in, weight_in);
  const Reduction reduction = checks::parse_reduction(reduction_name);
  checks::focal_grad_output(c10::DeviceType::CPU, grad_output_in, logits_in, reduction);
  const at::Tensor logits = logits_in.contiguous(), labels = labels_in.contiguous();
  const c10::optional<at::Tensor> weight =
      weight_in.has_value() ? c10::optional<at::Tensor>(weight_in->contiguous()) : c10::nullopt;
  const int64_t n = logits.size(0), c = logits.size(1);
  const auto compute = at::toOpMathType(logits.scalar_type());
  at::Tensor grad = at::empty_like(logits);
  Job job = make_job(logits, labels, weight, alpha, gamma);
  job.grad = grad.mutable_data_ptr();
  at::Tensor grad_output;
  if (reduction == Reduction::kNone) {
    grad_output = grad_output_in.to(compute).contiguous();
    job.grad_output = grad_output.const_data_ptr();
  } else if (n * c > 0) {
    // The upstream gradient of every element: the scalar's, over N * C for the mean.
    const double upstream = grad_output_in.item<double>();
    job.grad_scale = reduction == Reduction::kMean ? upstream / static_cast<double>(n * c)
                                                   : upstream;
  }
  run(job, n);
  return grad;
}

std::string cpu_capability() { return capability().name; }

}  // namespace

TORCH_LIBRARY_IMPL(fcos_fast, CPU, m) {
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::sigmoid_focal_loss"), TORCH_FN(sigmoid_focal_loss_cpu));
  m.impl(TORCH_SELECTIVE_NAME("fcos_fast::sigmoid_focal_loss_backward"),
         TORCH_FN(sigmoid_focal_loss_backward_cpu));
}

TORCH_LIBRARY_FRAGMENT(fcos_fast, m) {
  // The CPU capability whose vectorized kernels this build runs (tests and benchmarks
  // report it); it follows at::get_cpu_capability(), i.e. ATEN_CPU_CAPABILITY.
  m.def("_cpu_capability() -> str", &cpu_capability);
}

}  // namespace ops
}  // namespace fcos_fast
