#include <cstdint>

#include "common/internal.h"
#include "perfkern/perfkern.h"
#include "sparse24/sparse24.cuh"

namespace perfkern {
namespace sparse24 {
namespace {

template <typename Bits>
__global__ void __launch_bounds__(kThreads) gather_kernel(const GatherArgs<Bits> a) {
  for_each_chunk(a.rows, a.chunks_per_row, [&](int64_t row, int64_t chunk) { gather_item(a, row, chunk); });
}

// Gather moves bits only, so every element type of a given width shares one kernel.
template <typename T>
perfkern_status_t launch(const perfkern_sparse24_gather_params_t& p, cudaStream_t stream) {
  using Bits = typename ElemBits<T>::Bits;
  GatherArgs<Bits> a;
  a.dense = static_cast<const Bits*>(p.dense);
  a.meta = p.meta;
  a.values = static_cast<Bits*>(p.values);
  a.rows = p.rows;
  a.chunks_per_row = p.cols / kChunkCols;
  a.dense_row_stride = p.dense_row_stride;
  a.meta_row_stride = p.meta_row_stride;
  a.values_row_stride = p.values_row_stride;
  a.dense_vec = detail::vector_friendly(p.dense, p.dense_row_stride, sizeof(Bits), p.rows);
  a.values_vec = detail::vector_friendly(p.values, p.values_row_stride, sizeof(Bits), p.rows);
  unsigned int blocks = 0;
  PERFKERN_RETURN_IF_ERROR(detail::grid_size(p.device, p.rows * a.chunks_per_row, kThreads, &blocks));
  gather_kernel<Bits><<<blocks, kThreads, 0, stream>>>(a);
  return detail::check_launch("sparse24 gather kernel");
}

}  // namespace
}  // namespace sparse24
}  // namespace perfkern

extern "C" perfkern_status_t perfkern_sparse24_gather(const perfkern_sparse24_gather_params_t* params,
                                                      cudaStream_t stream) {
  using namespace perfkern::detail;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_sparse24_gather_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.dense, "dense"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.meta, "meta"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.values, "values"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.rows, "rows"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.cols, "cols"));
  PERFKERN_RETURN_IF_ERROR(check_multiple_of(p.cols, 16, "cols"));
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.dense_row_stride, p.cols, "cols", p.rows, "dense_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.meta_row_stride, p.cols / 16, "cols/16", p.rows, "meta_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.values_row_stride, p.cols / 2, "cols/2", p.rows, "values_row_stride"));
  if (p.rows == 0 || p.cols == 0) {
    return PERFKERN_SUCCESS;
  }
  DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return perfkern::sparse24::launch<float>(p, stream);
    case PERFKERN_DTYPE_F16:
      return perfkern::sparse24::launch<__half>(p, stream);
    case PERFKERN_DTYPE_BF16:
      return perfkern::sparse24::launch<__nv_bfloat16>(p, stream);
  }
  return fail(PERFKERN_ERROR_INVALID_VALUE, "dtype: unsupported");
}
