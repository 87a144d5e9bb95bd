// Sorting equal-length segments on the GPU with CUB (ops/cuda/per_class_topk*_kernel.cu,
// ops/cuda/batched_nms_padded_kernel.cu). A radix sort, so stable: equal keys keep their
// input order. The temporary storage is sized on the host from the shapes alone (CUB's
// size query launches nothing), so a sort never synchronises with the host.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <cub/device/device_segmented_radix_sort.cuh>

#include <cstdint>
#include <limits>

namespace fcos_fast {
namespace ops {

// Sorts (keys, values) of num_segments * segment_length items within each segment
// [s * segment_length, (s + 1) * segment_length) into (sorted_keys, sorted_values), by the
// key bits [0, end_bit) (all of them by default), ascending or (kDescending) descending.
// `options` gives the device for the offsets and the temporary storage.
template <bool kDescending, typename Key, typename Value>
void sort_segments(const Key* keys, Key* sorted_keys, const Value* values, Value* sorted_values,
                   int64_t num_segments, int64_t segment_length,
                   const at::TensorOptions& options, cudaStream_t stream,
                   int end_bit = static_cast<int>(sizeof(Key) * 8)) {
  const int64_t items = num_segments * segment_length;
  if (items == 0) return;
  // CUB counts items and offsets in int.
  TORCH_CHECK(items <= std::numeric_limits<int>::max(), "at most 2^31 - 1 items to sort, got ",
              items);
  const at::Tensor segment_offsets = at::arange(0, items + 1, segment_length,
                                                options.dtype(at::kInt));
  const int32_t* offsets = segment_offsets.const_data_ptr<int32_t>();
  size_t temp_bytes = 0;
  const auto sort = [&](void* temp) {
    if constexpr (kDescending) {
      return cub::DeviceSegmentedRadixSort::SortPairsDescending(
          temp, temp_bytes, keys, sorted_keys, values, sorted_values, static_cast<int>(items),
          static_cast<int>(num_segments), offsets, offsets + 1, 0, end_bit, stream);
    } else {
      return cub::DeviceSegmentedRadixSort::SortPairs(
          temp, temp_bytes, keys, sorted_keys, values, sorted_values, static_cast<int>(items),
          static_cast<int>(num_segments), offsets, offsets + 1, 0, end_bit, stream);
    }
  };
  C10_CUDA_CHECK(sort(nullptr));
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, options.dtype(at::kByte));
  C10_CUDA_CHECK(sort(temp.mutable_data_ptr()));
}

}  // namespace ops
}  // namespace fcos_fast
