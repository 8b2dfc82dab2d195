#include <cstdint>

#include "common/internal.h"
#include "perfkern/perfkern.h"
#include "sparse24/sparse24.cuh"

namespace perfkern {
namespace sparse24 {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads) compress_kernel(const CompressArgs<typename ElemBits<T>::Bits> a) {
  for_each_chunk(a.rows, a.chunks_per_row, [&](int64_t row, int64_t chunk) { compress_item<T>(a, row, chunk); });
}

template <typename T>
perfkern_status_t launch(const perfkern_sparse24_compress_params_t& p, cudaStream_t stream) {
  using Bits = typename ElemBits<T>::Bits;
  CompressArgs<Bits> a;
  a.src = static_cast<const Bits*>(p.src);
  a.values = static_cast<Bits*>(p.values);
  a.meta = p.meta;
  a.mask = p.mask;
  a.rows = p.rows;
  a.chunks_per_row = p.cols / kChunkCols;
  a.src_row_stride = p.src_row_stride;
  a.values_row_stride = p.values_row_stride;
  a.meta_row_stride = p.meta_row_stride;
  a.mask_row_stride = p.mask_row_stride;
  a.src_vec = detail::vector_friendly(p.src, p.src_row_stride, sizeof(Bits), p.rows);
  a.values_vec = p.values != nullptr && detail::vector_friendly(p.values, p.values_row_stride, sizeof(Bits), p.rows);
  a.mask_vec = p.mask != nullptr && detail::vector_friendly(p.mask, p.mask_row_stride, 1, p.rows);
  unsigned int blocks = 0;
  PERFKERN_RETURN_IF_ERROR(detail::grid_size(p.device, p.rows * a.chunks_per_row, kThreads, &blocks));
  compress_kernel<T><<<blocks, kThreads, 0, stream>>>(a);
  return detail::check_launch("sparse24 compress kernel");
}

}  // namespace
}  // namespace sparse24
}  // namespace perfkern

extern "C" perfkern_status_t perfkern_sparse24_compress(const perfkern_sparse24_compress_params_t* params,
                                                        cudaStream_t stream) {
  using namespace perfkern::detail;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_sparse24_compress_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.src, "src"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.rows, "rows"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.cols, "cols"));
  PERFKERN_RETURN_IF_ERROR(check_multiple_of(p.cols, 16, "cols"));
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.src_row_stride, p.cols, "cols", p.rows, "src_row_stride"));
  if (p.values != nullptr) {
    PERFKERN_RETURN_IF_ERROR(
        check_row_stride(p.values_row_stride, p.cols / 2, "cols/2", p.rows, "values_row_stride"));
  }
  if (p.meta != nullptr) {
    PERFKERN_RETURN_IF_ERROR(check_row_stride(p.meta_row_stride, p.cols / 16, "cols/16", p.rows, "meta_row_stride"));
  }
  if (p.mask != nullptr) {
    PERFKERN_RETURN_IF_ERROR(check_row_stride(p.mask_row_stride, p.cols, "cols", p.rows, "mask_row_stride"));
  }
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
