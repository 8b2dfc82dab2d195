// The host part of the C API: version, status strings, the per-thread last error and the parameter checks.
// Built into every flavour of the core (CUDA, emulated, CPU-only).
#include <cstdint>
#include <string>

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

}  // namespace detail
}  // namespace perfkern

extern "C" {

const char* perfkern_version(void) {
  return PERFKERN_STR(PERFKERN_VERSION_MAJOR) "." PERFKERN_STR(PERFKERN_VERSION_MINOR) "." PERFKERN_STR(
      PERFKERN_VERSION_PATCH);
}

const char* perfkern_cuda_archs(void) { return PERFKERN_BUILD_CUDA_ARCHS; }

const char* perfkern_build_flavor(void) { return PERFKERN_BUILD_FLAVOR; }

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

}  // extern "C"
