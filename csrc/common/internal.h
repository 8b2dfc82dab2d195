// Internal helpers shared by the C API implementation: error reporting, parameter checks, the
// device guard and launch sizing. Not installed; nothing here is part of the ABI.
#ifndef PERFKERN_COMMON_INTERNAL_H_
#define PERFKERN_COMMON_INTERNAL_H_

#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "perfkern/perfkern.h"

namespace perfkern {
namespace detail {

// Records msg as the calling thread's last error and returns status.
perfkern_status_t fail(perfkern_status_t status, const std::string& msg);

// Maps a CUDA runtime error to a status, records "<what>: <cudaGetErrorString>" and clears the
// runtime's (non-sticky) error state. No device / no driver maps to PERFKERN_ERROR_NO_DEVICE, a
// missing kernel image to PERFKERN_ERROR_NOT_SUPPORTED, everything else to PERFKERN_ERROR_CUDA.
perfkern_status_t cuda_fail(cudaError_t err, const char* what);

// Parameter checks. Each returns PERFKERN_SUCCESS or records a message naming the field, the
// expectation and the actual value, and returns PERFKERN_ERROR_INVALID_VALUE.
perfkern_status_t check_params_ptr(const void* params);
perfkern_status_t check_non_null(const void* ptr, const char* name);
perfkern_status_t check_non_negative(int64_t value, const char* name);
perfkern_status_t check_multiple_of(int64_t value, int64_t divisor, const char* name);
// Row strides matter only when there is more than one row.
perfkern_status_t check_row_stride(int64_t stride, int64_t needed, const char* needed_expr, int64_t rows,
                                   const char* name);
perfkern_status_t check_dtype(perfkern_dtype_t dtype);
perfkern_status_t check_device_ordinal(int device);

size_t dtype_size(perfkern_dtype_t dtype);

// True when 16-byte vector accesses at element offsets that are multiples of 16 bytes are aligned:
// the base pointer is 16-byte aligned and so is every row start.
bool vector_friendly(const void* ptr, int64_t row_stride, size_t elem_size, int64_t rows);

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

#define PERFKERN_RETURN_IF_ERROR(expr)             \
  do {                                             \
    const perfkern_status_t perfkern_st_ = (expr); \
    if (perfkern_st_ != PERFKERN_SUCCESS) {        \
      return perfkern_st_;                         \
    }                                              \
  } while (0)

#endif  // PERFKERN_COMMON_INTERNAL_H_
