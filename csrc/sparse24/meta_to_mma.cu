#include <cstdint>

#include "common/cuda_internal.h"
#include "common/kernel.cuh"
#include "perfkern/perfkern.h"
#include "sparse24/mma_layout.cuh"

namespace perfkern {
namespace sparse24 {
namespace {

constexpr int kMetaThreads = 256;

__global__ void __launch_bounds__(kMetaThreads)
    meta_to_mma_kernel(const uint16_t* src, uint32_t* dst, int64_t rows, int64_t meta_cols) {
  const int64_t total = mma::meta_to_mma_items(rows, meta_cols);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    mma::meta_to_mma_item(src, dst, rows, meta_cols, i);
  }
}

}  // namespace
}  // namespace sparse24
}  // namespace perfkern

extern "C" int64_t perfkern_sparse24_mma_meta_size(int64_t rows, int64_t meta_cols) {
  if (rows < 0 || meta_cols < 0) {
    return 0;
  }
  return perfkern::sparse24::mma::meta_mma_size(rows, meta_cols);
}

extern "C" perfkern_status_t perfkern_sparse24_meta_to_mma(const perfkern_sparse24_meta_to_mma_params_t* params,
                                                           cudaStream_t stream) {
  using namespace perfkern::detail;
  using namespace perfkern::sparse24;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_sparse24_meta_to_mma_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.src, "src"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.dst, "dst"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.rows, "rows"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.meta_cols, "meta_cols"));
  if (p.meta_cols % 2 != 0) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "meta_cols: expected a multiple of 2 (K = 16 * meta_cols must be a "
                                              "multiple of 32), got " + std::to_string(p.meta_cols));
  }
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  if (reinterpret_cast<uintptr_t>(p.dst) % 16 != 0) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "dst: expected a 16-byte aligned pointer");
  }
  if (p.rows == 0 || p.meta_cols == 0) {
    return PERFKERN_SUCCESS;
  }
  if (static_cast<const void*>(p.src) == static_cast<const void*>(p.dst)) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "dst: expected a buffer distinct from src, got src itself");
  }
  DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  const int64_t items = mma::meta_to_mma_items(p.rows, p.meta_cols);
  unsigned int blocks = 0;
  PERFKERN_RETURN_IF_ERROR(grid_size(p.device, items, kMetaThreads, &blocks));
  return launch("sparse24 meta_to_mma kernel", meta_to_mma_kernel, blocks, kMetaThreads, 0, stream,
                reinterpret_cast<const uint16_t*>(p.src), reinterpret_cast<uint32_t*>(p.dst), p.rows, p.meta_cols);
}
