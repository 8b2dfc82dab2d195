// The CUDA runtime part of the core: device queries, the device guard, launch sizing and launch checks.
#include <algorithm>
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "common/cuda_internal.h"
#include "perfkern/perfkern.h"
#include "perfkern_build_config.h"

namespace perfkern {
namespace detail {

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
