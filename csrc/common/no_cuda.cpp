// The CUDA entry points of the C API in a build without CUDA (no toolkit, or PERFKERN_CUDA=OFF): the ABI
// stays the same, every CUDA launcher returns PERFKERN_ERROR_NOT_SUPPORTED and no device is reported, so a
// program linked against this build learns at run time what it lacks. The CPU kernels work as usual.
#include <cstdint>

#include "common/internal.h"
#include "perfkern/perfkern.h"

namespace {

constexpr const char* kNoCuda = "this perfkern library was built without CUDA (no CUDA toolkit at build time)";

perfkern_status_t not_built() { return perfkern::detail::fail(PERFKERN_ERROR_NOT_SUPPORTED, kNoCuda); }

}  // namespace

extern "C" {

perfkern_status_t perfkern_device_count(int* count) {
  if (count == nullptr) {
    return perfkern::detail::fail(PERFKERN_ERROR_INVALID_VALUE, "count: expected a non-null pointer, got NULL");
  }
  *count = 0;
  return perfkern::detail::fail(PERFKERN_ERROR_NO_DEVICE, kNoCuda);
}

perfkern_status_t perfkern_device_info(int device, perfkern_device_info_t* info) {
  (void)device;
  if (info == nullptr) {
    return perfkern::detail::fail(PERFKERN_ERROR_INVALID_VALUE, "info: expected a non-null pointer, got NULL");
  }
  return perfkern::detail::fail(PERFKERN_ERROR_NO_DEVICE, kNoCuda);
}

int64_t perfkern_sparse24_mma_meta_size(int64_t rows, int64_t meta_cols) {
  // The size the header documents; the layout itself exists only with CUDA.
  return rows < 0 || meta_cols < 0 ? 0 : (rows + 31) / 32 * 32 * meta_cols;
}

int64_t perfkern_pera_expanded_rank(int64_t r, perfkern_pera_mode_t mode) {
  // A property of the operator, not of a kernel: the same answer in every build.
  if (r < 0 || (mode != PERFKERN_PERA_FULL && mode != PERFKERN_PERA_SQUARE && mode != PERFKERN_PERA_CROSS)) {
    return 0;
  }
  return r + (mode == PERFKERN_PERA_FULL ? r * (r + 1) / 2 : mode == PERFKERN_PERA_SQUARE ? r : r * (r - 1) / 2);
}

// The workspace sizes belong to launchers this build does not have.
perfkern_status_t perfkern_pera_backward_workspace_size(const perfkern_pera_backward_params_t* params,
                                                        int64_t* bytes) {
  (void)params;
  if (bytes != nullptr) {
    *bytes = 0;
  }
  return not_built();
}

perfkern_status_t perfkern_dendrite_correlation_workspace_size(const perfkern_dendrite_correlation_params_t* params,
                                                               int64_t* bytes) {
  (void)params;
  if (bytes != nullptr) {
    *bytes = 0;
  }
  return not_built();
}

// Every launcher of perfkern.h that takes a cudaStream_t (tests/test_build.py checks the list is complete).
#define PERFKERN_NO_CUDA(name, params_t)                                  \
  perfkern_status_t name(const params_t* params, cudaStream_t stream) { \
    (void)params;                                                         \
    (void)stream;                                                         \
    return not_built();                                                   \
  }

PERFKERN_NO_CUDA(perfkern_sparse24_compress, perfkern_sparse24_compress_params_t)
PERFKERN_NO_CUDA(perfkern_sparse24_decompress, perfkern_sparse24_decompress_params_t)
PERFKERN_NO_CUDA(perfkern_sparse24_gather, perfkern_sparse24_gather_params_t)
PERFKERN_NO_CUDA(perfkern_sparse24_meta_reorder, perfkern_sparse24_meta_reorder_params_t)
PERFKERN_NO_CUDA(perfkern_sparse24_meta_to_mma, perfkern_sparse24_meta_to_mma_params_t)
PERFKERN_NO_CUDA(perfkern_sparse24_mm, perfkern_sparse24_mm_params_t)
PERFKERN_NO_CUDA(perfkern_sparse24_weight_grad, perfkern_sparse24_weight_grad_params_t)
PERFKERN_NO_CUDA(perfkern_sparse24_transpose_prune, perfkern_sparse24_transpose_prune_params_t)
PERFKERN_NO_CUDA(perfkern_pera_forward, perfkern_pera_forward_params_t)
PERFKERN_NO_CUDA(perfkern_pera_delta_weight, perfkern_pera_delta_weight_params_t)
PERFKERN_NO_CUDA(perfkern_pera_backward, perfkern_pera_backward_params_t)
PERFKERN_NO_CUDA(perfkern_dendrite_correlation, perfkern_dendrite_correlation_params_t)
PERFKERN_NO_CUDA(perfkern_dendrite_grad, perfkern_dendrite_grad_params_t)
PERFKERN_NO_CUDA(perfkern_dendrite_state_update, perfkern_dendrite_state_update_params_t)

}  // extern "C"
