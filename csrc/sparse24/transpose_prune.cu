// perfkern_sparse24_transpose_prune: SLoPe's backward copy from the canonical weight, on the device. One item is
// one chunk of the output: 16 consecutive entries along n of one column kk of Ws, i.e. one metadata word and 8
// values of row kk of the copy. The column is decoded from Ws's compressed rows as decompress would (the second
// value if kk is the second index, else the first if it is the first, else zero), then compressed (choose_mask)
// or gathered onto the given mask with the format's own chunk functions, so the copy is bit for bit what
// compress_2to4 / gather_2to4 of the dense Ws^T give. Consecutive threads take consecutive kk of the same 16
// rows: their metadata word is shared and their values are adjacent.
#include <cstdint>

#include "common/cuda_internal.h"
#include "common/kernel.cuh"
#include "perfkern/perfkern.h"
#include "sparse24/sparse24.cuh"

namespace perfkern {
namespace sparse24 {
namespace {

template <typename Bits>
struct TransposeArgs {
  const Bits* values;
  const int16_t* meta;
  Bits* bwd_values;
  int16_t* bwd_meta;
  int64_t chunks;  // n / 16
  int64_t k;
  int64_t values_row_stride;
  int64_t meta_row_stride;
  int64_t bwd_values_row_stride;
  int64_t bwd_meta_row_stride;
  bool choose_mask;
  bool bwd_values_vec;
};

#if PERFKERN_DEVICE_CODE

template <typename T>
__device__ __forceinline__ void transpose_item(const TransposeArgs<typename ElemBits<T>::Bits>& a, int64_t chunk,
                                               int64_t kk) {
  using Bits = typename ElemBits<T>::Bits;
  const uint32_t pos = static_cast<uint32_t>(kk & 3);
  const int shift = static_cast<int>(4 * ((kk >> 2) & 3));
  Bits column[kChunkCols];
#pragma unroll
  for (int e = 0; e < kChunkCols; ++e) {
    const int64_t row = chunk * kChunkCols + e;
    const uint32_t nib = (load_meta(a.meta + row * a.meta_row_stride + kk / 16) >> shift) & 0xfu;
    const Bits* pair = a.values + row * a.values_row_stride + 2 * (kk >> 2);
    column[e] = pos == ((nib >> 2) & 3u) ? __ldg(pair + 1) : (pos == (nib & 3u) ? __ldg(pair) : Bits(0));
  }
  Bits vals[kChunkValues];
  int16_t* meta_out = a.bwd_meta + kk * a.bwd_meta_row_stride + chunk;
  if (a.choose_mask) {
    uint32_t meta;
    uint32_t mask[4];
    compress_chunk<T>(column, vals, meta, mask);
    *meta_out = static_cast<int16_t>(static_cast<uint16_t>(meta));
  } else {
    gather_chunk(load_meta(meta_out), column, vals);
  }
  store_elems(a.bwd_values + kk * a.bwd_values_row_stride + chunk * kChunkValues, a.bwd_values_vec, vals);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) transpose_prune_kernel(const TransposeArgs<typename ElemBits<T>::Bits> a) {
  for_each_chunk(a.chunks, a.k, [&](int64_t chunk, int64_t kk) { transpose_item<T>(a, chunk, kk); });
}

template <typename T>
perfkern_status_t launch(const perfkern_sparse24_transpose_prune_params_t& p, cudaStream_t stream) {
  using Bits = typename ElemBits<T>::Bits;
  TransposeArgs<Bits> a;
  a.values = static_cast<const Bits*>(p.values);
  a.meta = p.meta;
  a.bwd_values = static_cast<Bits*>(p.bwd_values);
  a.bwd_meta = p.bwd_meta;
  a.chunks = p.n / kChunkCols;
  a.k = p.k;
  a.values_row_stride = p.values_row_stride;
  a.meta_row_stride = p.meta_row_stride;
  a.bwd_values_row_stride = p.bwd_values_row_stride;
  a.bwd_meta_row_stride = p.bwd_meta_row_stride;
  a.choose_mask = p.choose_mask != 0;
  a.bwd_values_vec = detail::vector_friendly(p.bwd_values, p.bwd_values_row_stride, sizeof(Bits), p.k);
  unsigned int blocks = 0;
  PERFKERN_RETURN_IF_ERROR(detail::grid_size(p.device, a.chunks * a.k, kThreads, &blocks));
  return detail::launch("sparse24 transpose_prune kernel", transpose_prune_kernel<T>, blocks, kThreads, 0, stream, a);
}

#endif  // PERFKERN_DEVICE_CODE

}  // namespace
}  // namespace sparse24
}  // namespace perfkern

extern "C" perfkern_status_t perfkern_sparse24_transpose_prune(
    const perfkern_sparse24_transpose_prune_params_t* params, cudaStream_t stream) {
  using namespace perfkern::detail;
  namespace sp = perfkern::sparse24;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_sparse24_transpose_prune_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.n, "n"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.k, "k"));
  PERFKERN_RETURN_IF_ERROR(check_multiple_of(p.n, 16, "n"));
  PERFKERN_RETURN_IF_ERROR(check_multiple_of(p.k, 16, "k"));
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.values_row_stride, p.k / 2, "k/2", p.n, "values_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.meta_row_stride, p.k / 16, "k/16", p.n, "meta_row_stride"));
  PERFKERN_RETURN_IF_ERROR(
      check_row_stride(p.bwd_values_row_stride, p.n / 2, "n/2", p.k, "bwd_values_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.bwd_meta_row_stride, p.n / 16, "n/16", p.k, "bwd_meta_row_stride"));
  if (p.n == 0 || p.k == 0) {
    return PERFKERN_SUCCESS;
  }
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.values, "values"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.meta, "meta"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.bwd_values, "bwd_values"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.bwd_meta, "bwd_meta"));
  DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return sp::launch<float>(p, stream);
    case PERFKERN_DTYPE_F16:
      return sp::launch<__half>(p, stream);
    case PERFKERN_DTYPE_BF16:
      return sp::launch<__nv_bfloat16>(p, stream);
  }
  return fail(PERFKERN_ERROR_INVALID_VALUE, "dtype: unsupported");
}
