// perfkern_sparse24_weight_grad: parameter checks and the dtype dispatch (kernels in weight_grad.cuh).
#include <cstdint>
#include <string>

#include "common/cuda_internal.h"
#include "perfkern/perfkern.h"
#include "sparse24/weight_grad.cuh"

namespace {

namespace wgrad = perfkern::sparse24::wgrad;
namespace tile = perfkern::tile;

template <typename T>
wgrad::Args<T> args(const perfkern_sparse24_weight_grad_params_t& p) {
  wgrad::Args<T> a{};
  a.dy = tile::matrix<T>(p.dy, p.m, p.n, p.dy_row_stride);
  a.x = tile::matrix<T>(p.x, p.m, p.k, p.x_row_stride);
  a.meta = p.meta;
  a.out = p.out;
  a.m = p.m;
  a.n = p.n;
  a.k = p.k;
  a.meta_row_stride = p.meta_row_stride;
  a.out_row_stride = p.out_row_stride;
  a.accumulate = p.accumulate != 0;
  a.out_f32 = p.out_dtype == PERFKERN_DTYPE_F32;
  a.out_vec = a.out_f32 ? tile::vec_ok<float>(p.out, p.out_row_stride, p.n)
                        : tile::vec_ok<uint16_t>(p.out, p.out_row_stride, p.n);
  return a;
}

}  // namespace

extern "C" perfkern_status_t perfkern_sparse24_weight_grad(const perfkern_sparse24_weight_grad_params_t* params,
                                                           cudaStream_t stream) {
  using namespace perfkern::detail;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_sparse24_weight_grad_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.m, "m"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.n, "n"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.k, "k"));
  PERFKERN_RETURN_IF_ERROR(check_multiple_of(p.k, 16, "k"));
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.out_dtype));
  if (p.out_dtype != p.dtype && p.out_dtype != PERFKERN_DTYPE_F32) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "out_dtype: expected dtype (" + std::to_string(p.dtype) +
                                                  ") or 0 (F32), got " + std::to_string(p.out_dtype));
  }
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.dy_row_stride, p.n, "n", p.m, "dy_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.x_row_stride, p.k, "k", p.m, "x_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.meta_row_stride, p.k / 16, "k/16", p.n, "meta_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.out_row_stride, p.k / 2, "k/2", p.n, "out_row_stride"));
  if (p.n == 0 || p.k == 0) {
    return PERFKERN_SUCCESS;
  }
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.meta, "meta"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.out, "out"));
  if (p.m > 0) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.dy, "dy"));
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.x, "x"));
  }
  DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  int sms = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, p.device);
  if (err != cudaSuccess) {
    return cuda_fail(err, "cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount)");
  }
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return wgrad::launch_f32(args<float>(p), sms, stream);
    case PERFKERN_DTYPE_F16:
      return wgrad::launch_f16(args<__half>(p), sms, stream);
    case PERFKERN_DTYPE_BF16:
      return wgrad::launch_bf16(args<__nv_bfloat16>(p), sms, stream);
  }
  return fail(PERFKERN_ERROR_INVALID_VALUE, "dtype: unsupported");
}
