#include <cstdint>

#include "common/cuda_internal.h"
#include "common/kernel.cuh"
#include "perfkern/perfkern.h"
#include "sparse24/sparse24.cuh"

namespace perfkern {
namespace sparse24 {
namespace {

__global__ void __launch_bounds__(kThreads) meta_reorder_kernel(const MetaReorderArgs a) {
  const int64_t total = meta_reorder_items(a.rows, a.meta_cols);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    meta_reorder_item(a, i);
  }
}

}  // namespace
}  // namespace sparse24
}  // namespace perfkern

extern "C" perfkern_status_t perfkern_sparse24_meta_reorder(const perfkern_sparse24_meta_reorder_params_t* params,
                                                            cudaStream_t stream) {
  using namespace perfkern::detail;
  using namespace perfkern::sparse24;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_sparse24_meta_reorder_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.rows, "rows"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.meta_cols, "meta_cols"));
  if (p.rows > 0 && p.meta_cols > 0) {  // an empty matrix has no elements to point at
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.src, "src"));
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.dst, "dst"));
  }
  PERFKERN_RETURN_IF_ERROR(check_multiple_of(p.rows, 32, "rows"));
  PERFKERN_RETURN_IF_ERROR(check_multiple_of(p.meta_cols, 4, "meta_cols"));
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  if (p.src == p.dst && p.rows > 0 && p.meta_cols > 0) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "dst: expected a buffer distinct from src, got src itself");
  }
  if (p.rows == 0 || p.meta_cols == 0) {
    return PERFKERN_SUCCESS;
  }
  DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  MetaReorderArgs a;
  a.src = p.src;
  a.dst = p.dst;
  a.rows = p.rows;
  a.meta_cols = p.meta_cols;
  a.to_cutlass = p.to_cutlass != 0;
  const void* canonical = a.to_cutlass ? static_cast<const void*>(p.src) : static_cast<const void*>(p.dst);
  const void* cutlass = a.to_cutlass ? static_cast<const void*>(p.dst) : static_cast<const void*>(p.src);
  a.canonical_vec = reinterpret_cast<uintptr_t>(canonical) % 4 == 0;
  a.cutlass_vec = reinterpret_cast<uintptr_t>(cutlass) % 16 == 0;
  unsigned int blocks = 0;
  PERFKERN_RETURN_IF_ERROR(grid_size(p.device, meta_reorder_items(p.rows, p.meta_cols), kThreads, &blocks));
  return launch("sparse24 meta_reorder kernel", meta_reorder_kernel, blocks, kThreads, 0, stream, a);
}
