// The interface between the CPU op fcos_fast::sigmoid_focal_loss
// (ops/cpu/sigmoid_focal_loss_kernel.cpp: checks, allocation, threads, the reduction) and
// its row kernel (sigmoid_focal_loss_rows.cpp), which setup.py compiles once per CPU
// capability, as ATen compiles its own CPU kernels: DEFAULT, and on x86-64 AVX2 and
// AVX512, each into its own namespace (-DCPU_CAPABILITY=<name>). The op calls the one
// matching at::get_cpu_capability() (so ATEN_CPU_CAPABILITY selects it as it selects
// ATen's). Only plain data crosses this boundary.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fcos_fast {
namespace ops {
namespace focal_cpu {

// What one call computes over the rows [row_begin, row_end) of [N, C] logits.
struct Job {
  c10::ScalarType dtype;  // of logits and grad: Float, Double, BFloat16 or Half
  const void* logits;     // [N, C], contiguous
  const int64_t* labels;  // [N]; outside [0, C): no positive class in the row
  const void* weight;     // [N] in the computing dtype (float, or double), or null
  int64_t num_classes;
  double alpha_positive;  // alpha_t of the positive class and of the negatives
  double alpha_negative;
  double gamma;
  bool reduce;                // return the sum of the losses
  void* loss;                 // or store them ([N, C], computing dtype); or null: neither
  void* grad;                 // [N, C] in dtype: d loss / d logits, times the upstream; or null
  const void* grad_output;    // per-element upstream ([N, C], computing dtype), or null:
  double grad_scale;          // then every element's upstream is this
};

// Returns the rows' summed loss when job.reduce (in double), else 0.
using RowsFn = double (*)(const Job& job, int64_t row_begin, int64_t row_end);

// One per capability built; the definitions are sigmoid_focal_loss_rows.cpp.
namespace DEFAULT {
double sigmoid_focal_loss_rows(const Job& job, int64_t row_begin, int64_t row_end);
}
#if defined(FCOS_FAST_CPU_CAPABILITY_AVX2)
namespace AVX2 {
double sigmoid_focal_loss_rows(const Job& job, int64_t row_begin, int64_t row_end);
}
#endif
#if defined(FCOS_FAST_CPU_CAPABILITY_AVX512)
namespace AVX512 {
double sigmoid_focal_loss_rows(const Job& job, int64_t row_begin, int64_t row_end);
}
#endif

}  // namespace focal_cpu
}  // namespace ops
}  // namespace fcos_fast
