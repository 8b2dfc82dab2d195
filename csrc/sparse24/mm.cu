#include <cstdint>
#include <mutex>
#include <string>

#include "common/cuda_internal.h"
#include "perfkern/perfkern.h"
#include "sparse24/mm_kernel.cuh"
#include "sparse24/mm_wgmma_kernel.cuh"

namespace {

namespace sp = perfkern::sparse24;

// Below this M the mma.sp decode/small tilings stream the weight with more CTAs than 64 x 64 tiles would.
constexpr int64_t kWgmmaMinM = 32;
constexpr int kMaxDevices = 64;

// Whether `device` can run the wgmma kernel of this dtype, asked once per device (the answer cannot
// change in a process). The device is current when this runs.
bool wgmma_runnable(int device, bool f16) {
  static std::once_flag once[2][kMaxDevices];
  static bool answer[2][kMaxDevices];
  if (device < 0 || device >= kMaxDevices) {
    return f16 ? sp::wgmma::runnable_f16() : sp::wgmma::runnable_bf16();
  }
  std::call_once(once[f16][device], [&] {
    answer[f16][device] = f16 ? sp::wgmma::runnable_f16() : sp::wgmma::runnable_bf16();
  });
  return answer[f16][device];
}

}  // namespace

extern "C" perfkern_status_t perfkern_sparse24_mm(const perfkern_sparse24_mm_params_t* params, cudaStream_t stream) {
  using namespace perfkern::detail;
  namespace mma = perfkern::sparse24::mma;
  namespace wgmma = perfkern::sparse24::wgmma;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_sparse24_mm_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.m, "m"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.n, "n"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.k, "k"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.r, "r"));
  PERFKERN_RETURN_IF_ERROR(check_multiple_of(p.k, 32, "k"));
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  if (p.dtype == PERFKERN_DTYPE_F32) {
    return fail(PERFKERN_ERROR_NOT_SUPPORTED,
                "dtype: the 2:4 sparse GEMM runs on fp16/bf16 sparse tensor cores, expected 1 (F16) or 2 (BF16), got 0 "
                "(F32)");
  }
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  if (p.kernel != PERFKERN_SPARSE24_MM_AUTO && p.kernel != PERFKERN_SPARSE24_MM_MMA_SP &&
      p.kernel != PERFKERN_SPARSE24_MM_WGMMA_SP) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "kernel: expected 0 (AUTO), 1 (MMA_SP) or 2 (WGMMA_SP), got " +
                                                  std::to_string(static_cast<int>(p.kernel)));
  }
  if ((p.lora_t == nullptr) != (p.lora_b == nullptr)) {
    return fail(PERFKERN_ERROR_INVALID_VALUE,
                std::string("lora_t, lora_b: expected both or neither, got ") +
                    (p.lora_t == nullptr ? "lora_b only" : "lora_t only"));
  }
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.x_row_stride, p.k, "k", p.m, "x_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.values_row_stride, p.k / 2, "k/2", p.n, "values_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.out_row_stride, p.n, "n", p.m, "out_row_stride"));
  if (p.m == 0 || p.n == 0) {
    return PERFKERN_SUCCESS;
  }
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.out, "out"));
  if (p.k > 0) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.x, "x"));
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.values, "values"));
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.meta_mma, "meta_mma"));
    if (reinterpret_cast<uintptr_t>(p.meta_mma) % 16 != 0) {
      return fail(PERFKERN_ERROR_INVALID_VALUE, "meta_mma: expected a 16-byte aligned pointer");
    }
  }
  DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());

  mma::MmArgs a{};
  a.x = static_cast<const uint16_t*>(p.x);
  a.values = static_cast<const uint16_t*>(p.values);
  a.meta = reinterpret_cast<const uint32_t*>(p.meta_mma);
  a.bias = static_cast<const uint16_t*>(p.bias);
  a.lora_t = static_cast<const uint16_t*>(p.lora_t);
  a.lora_b = static_cast<const uint16_t*>(p.lora_b);
  a.out = static_cast<uint16_t*>(p.out);
  a.m = p.m;
  a.n = p.n;
  a.k = p.k;
  a.r = p.lora_t == nullptr ? 0 : p.r;
  a.scale = p.scale;
  a.x_row_stride = p.x_row_stride;
  a.values_row_stride = p.values_row_stride;
  a.bias_stride = p.bias_stride;
  a.t_stride0 = p.t_stride0;
  a.t_stride1 = p.t_stride1;
  a.b_stride0 = p.b_stride0;
  a.b_stride1 = p.b_stride1;
  a.out_row_stride = p.out_row_stride;
  a.x_vec = vector_friendly(p.x, p.x_row_stride, 2, p.m);
  a.values_vec = vector_friendly(p.values, p.values_row_stride, 2, p.n);
  a.out_vec = vector_friendly(p.out, p.out_row_stride, 2, p.m);
  const bool f16 = p.dtype == PERFKERN_DTYPE_F16;
  bool use_wgmma = false;
  if (p.kernel == PERFKERN_SPARSE24_MM_WGMMA_SP || (p.kernel == PERFKERN_SPARSE24_MM_AUTO && p.m > kWgmmaMinM)) {
    use_wgmma = wgmma_runnable(p.device, f16);
    if (!use_wgmma && p.kernel == PERFKERN_SPARSE24_MM_WGMMA_SP) {
      return fail(PERFKERN_ERROR_NOT_SUPPORTED,
                  "kernel: the wgmma.sp kernel needs an sm_90 device and a library built for 90a "
                  "(PERFKERN_CUDA_ARCHS); device " + std::to_string(p.device) + " cannot run it");
    }
  }
  if (use_wgmma) {
    return f16 ? wgmma::launch_mm_f16(a, stream) : wgmma::launch_mm_bf16(a, stream);
  }
  return f16 ? mma::launch_mm_f16(a, stream) : mma::launch_mm_bf16(a, stream);
}
