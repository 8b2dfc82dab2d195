// Internal helpers of the CUDA launchers: CUDA runtime errors as statuses, the device guard and launch
// sizing. Not installed; nothing here is part of the ABI.
#ifndef PERFKERN_COMMON_CUDA_INTERNAL_H_
#define PERFKERN_COMMON_CUDA_INTERNAL_H_

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/internal.h"

namespace perfkern {
namespace detail {

// Maps a CUDA runtime error to a status, records "<what>: <cudaGetErrorString>" and clears the
// runtime's (non-sticky) error state. No device / no driver maps to PERFKERN_ERROR_NO_DEVICE, a
// missing kernel image to PERFKERN_ERROR_NOT_SUPPORTED, everything else to PERFKERN_ERROR_CUDA.
perfkern_status_t cuda_fail(cudaError_t err, const char* what);

// Makes params' device current for its lifetime and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

  // PERFKERN_SUCCESS once the device is current; otherwise the failure (already recorded).
  perfkern_status_t status() const { return status_; }

 private:
  int previous_ = -1;
  bool switched_ = false;
  perfkern_status_t status_ = PERFKERN_SUCCESS;
};

// Number of blocks for a grid-stride kernel over `items` work items: enough to cover the work,
// capped at a few waves of the current device.
perfkern_status_t grid_size(int device, int64_t items, int threads_per_block, unsigned int* blocks);

// Checks the launch that was just enqueued.
perfkern_status_t check_launch(const char* kernel);

}  // namespace detail
}  // namespace perfkern

#endif  // PERFKERN_COMMON_CUDA_INTERNAL_H_
