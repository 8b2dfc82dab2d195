// Internal helpers shared by the C API implementation: error reporting and parameter checks, for every
// part of the core (CUDA, emulated, CPU). The CUDA runtime's helpers are in common/cuda_internal.h. Not
// installed; nothing here is part of the ABI.
#ifndef PERFKERN_COMMON_INTERNAL_H_
#define PERFKERN_COMMON_INTERNAL_H_

#include <cstdint>
#include <cstddef>
#include <string>

#include "perfkern/perfkern.h"

namespace perfkern {
namespace detail {

// Records msg as the calling thread's last error and returns status.
perfkern_status_t fail(perfkern_status_t status, const std::string& msg);

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
