#include <algorithm>
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "common/internal.h"
#include "perfkern/perfkern.h"
#include "perfkern_build_config.h"

#define PERFKERN_STR_(x) #x
#define PERFKERN_STR(x) PERFKERN_STR_(x)

namespace perfkern {
namespace detail {
namespace {

thread_local std::string g_last_error;

perfkern_status_t invalid(const std::string& msg) { return fail(PERFKERN_ERROR_INVALID_VALUE, msg); }

}  // namespace

perfkern_status_t fail(perfkern_status_t status, const std::string& msg) {
  g_last_error = msg;
  return status;
}

perfkern_status_t cuda_fail(cudaError_t err, const char* what) {
  // Clear the runtime's error state so that a later cudaGetLastError() does not report this again.
  (void)cudaGetLastError();
  perfkern_status_t status = PERFKERN_ERROR_CUDA;
  switch (err) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      status = PERFKERN_ERROR_NO_DEVICE;
      break;
    case cudaErrorNoKernelImageForDevice:
      status = PERFKERN_ERROR_NOT_SUPPORTED;
      break;
    default:
      break;
  }
  std::string msg = std::string(what) + ": " + cudaGetErrorString(err);
  if (status == PERFKERN_ERROR_NOT_SUPPORTED) {
    msg += " (this build has code for CUDA architectures " PERFKERN_BUILD_CUDA_ARCHS ")";
  }
  return fail(status, msg);
}

perfkern_status_t check_params_ptr(const void* params) {
  if (params == nullptr) {
    return invalid("params: expected a non-null pointer, got NULL");
  }
  return PERFKERN_SUCCESS;
}

perfkern_status_t check_non_null(const void* ptr, const char* name) {
  if (ptr == nullptr) {
    return invalid(std::string(name) + ": expected a non-null device pointer, got NULL");
  }
  return PERFKERN_SUCCESS;
}

perfkern_status_t check_non_negative(int64_t value, const char* name) {
  if (value < 0) {
    return invalid(std::string(name) + ": expected >= 0, got " + std::to_string(value));
  }
  return PERFKERN_SUCCESS;
}

perfkern_status_t check_multiple_of(int64_t value, int64_t divisor, const char* name) {
  if (value % divisor != 0) {
    return invalid(std::string(name) + ": expected a multiple of " + std::to_string(divisor) + ", got " +
                   std::to_string(value));
  }
  return PERFKERN_SUCCESS;
}

perfkern_status_t check_row_stride(int64_t stride, int64_t needed, const char* needed_expr, int64_t rows,
                                   const char* name) {
  if (rows > 1 && stride < needed) {
    return invalid(std::string(name) + ": expected >= " + std::to_string(needed) + " (" + needed_expr + "), got " +
                   std::to_string(stride));
  }
  return PERFKERN_SUCCESS;
}

perfkern_status_t check_dtype(perfkern_dtype_t dtype) {
  const int code = static_cast<int>(dtype);
  if (code < PERFKERN_DTYPE_F32 || code > PERFKERN_DTYPE_BF16) {
    return invalid("dtype: expected 0 (F32), 1 (F16) or 2 (BF16), got " + std::to_string(code));
  }
  return PERFKERN_SUCCESS;
}

perfkern_status_t check_device_ordinal(int device) {
  if (device < 0) {
    return invalid("device: expected >= 0, got " + std::to_string(device));
  }
  return PERFKERN_SUCCESS;
}

size_t dtype_size(perfkern_dtype_t dtype) { return dtype == PERFKERN_DTYPE_F32 ? 4 : 2; }

bool vector_friendly(const void* ptr, int64_t row_stride, size_t elem_size, int64_t rows) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
    return false;
  }
  return rows <= 1 || (row_stride * static_cast<int64_t>(elem_size)) % 16 == 0;
}

DeviceGuard::DeviceGuard(int device) {
  cudaError_t err = cudaGetDevice(&previous_);
  if (err != cudaSuccess) {
    status_ = cuda_fail(err, "cudaGetDevice");
    return;
  }
  if (previous_ != device) {
    err = cudaSetDevice(device);
    if (err == cudaErrorInvalidDevice) {
      (void)cudaGetLastError();
      int count = 0;
      if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();
      }
      status_ = fail(PERFKERN_ERROR_INVALID_VALUE, "device: expected 0 <= device < " + std::to_string(count) +
                                                       ", got " + std::to_string(device));
      return;
    }
    if (err != cudaSuccess) {
      status_ = cuda_fail(err, ("cudaSetDevice(" + std::to_string(device) + ")").c_str());
      return;
    }
    switched_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  if (switched_) {
    if (cudaSetDevice(previous_) != cudaSuccess) {
      (void)cudaGetLastError();
    }
  }
}

perfkern_status_t grid_size(int device, int64_t items, int threads_per_block, unsigned int* blocks) {
  int sms = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) {
    return cuda_fail(err, "cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount)");
  }
  const int64_t needed = (items + threads_per_block - 1) / threads_per_block;
  const int64_t resident = static_cast<int64_t>(std::max(sms, 1)) * std::max(2048 / threads_per_block, 1);
  const int64_t cap = resident * 4;
  *blocks = static_cast<unsigned int>(std::max<int64_t>(1, std::min(needed, cap)));
  return PERFKERN_SUCCESS;
}

perfkern_status_t check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return cuda_fail(err, (std::string("launch of ") + kernel).c_str());
  }
  return PERFKERN_SUCCESS;
}

}  // namespace detail
}  // namespace perfkern

using perfkern::detail::cuda_fail;
using perfkern::detail::fail;

extern "C" {

const char* perfkern_version(void) {
  return PERFKERN_STR(PERFKERN_VERSION_MAJOR) "." PERFKERN_STR(PERFKERN_VERSION_MINOR) "." PERFKERN_STR(
      PERFKERN_VERSION_PATCH);
}

const char* perfkern_cuda_archs(void) { return PERFKERN_BUILD_CUDA_ARCHS; }

const char* perfkern_status_string(perfkern_status_t status) {
  switch (status) {
    case PERFKERN_SUCCESS:
      return "success";
    case PERFKERN_ERROR_INVALID_VALUE:
      return "invalid value";
    case PERFKERN_ERROR_NOT_SUPPORTED:
      return "not supported";
    case PERFKERN_ERROR_NO_DEVICE:
      return "no CUDA device";
    case PERFKERN_ERROR_CUDA:
      return "CUDA error";
  }
  return "unknown status";
}

const char* perfkern_last_error(void) { return perfkern::detail::g_last_error.c_str(); }

perfkern_status_t perfkern_device_count(int* count) {
  if (count == nullptr) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "count: expected a non-null pointer, got NULL");
  }
  *count = 0;
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return fail(PERFKERN_ERROR_NO_DEVICE, std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err));
  }
  if (n <= 0) {
    return fail(PERFKERN_ERROR_NO_DEVICE, "cudaGetDeviceCount: no CUDA device found");
  }
  *count = n;
  return PERFKERN_SUCCESS;
}

perfkern_status_t perfkern_device_info(int device, perfkern_device_info_t* info) {
  if (info == nullptr) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "info: expected a non-null pointer, got NULL");
  }
  int count = 0;
  PERFKERN_RETURN_IF_ERROR(perfkern_device_count(&count));
  if (device < 0 || device >= count) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "device: expected 0 <= device < " + std::to_string(count) + ", got " +
                                                  std::to_string(device));
  }
  cudaDeviceProp prop;
  const cudaError_t err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) {
    return cuda_fail(err, "cudaGetDeviceProperties");
  }
  *info = perfkern_device_info_t{};
  const size_t n = std::min(sizeof(info->name) - 1, sizeof(prop.name));
  for (size_t i = 0; i < n && prop.name[i] != '\0'; ++i) {
    info->name[i] = prop.name[i];
  }
  info->major = prop.major;
  info->minor = prop.minor;
  info->multiprocessor_count = prop.multiProcessorCount;
  info->total_global_mem = static_cast<int64_t>(prop.totalGlobalMem);
  return PERFKERN_SUCCESS;
}

}  // extern "C"
