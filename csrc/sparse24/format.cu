// The element-wise 2:4 format launchers (compress, decompress, gather): one template does the parameter
// checks, the dtype switch and the grid-stride launch over 16-column chunks; each op says only which
// tensors it takes (their roles: pointer, row stride, width, required or not), how its kernel arguments
// are built from its params, and which per-chunk function runs.
#include <array>
#include <cstdint>

#include "common/cuda_internal.h"
#include "common/kernel.cuh"
#include "perfkern/perfkern.h"
#include "sparse24/sparse24.cuh"

namespace perfkern {
namespace sparse24 {
namespace {

// One tensor of a format op: [rows, width] with unit column stride.
struct Operand {
  const void* ptr;
  int64_t row_stride;
  int64_t width;
  const char* width_expr;  // "cols", "cols/2", "cols/16": names the width in messages
  const char* name;
  const char* stride_name;
  bool required;
};

// The kernel is a template over the arguments and the per-chunk function, not over the op: ops that only
// move bits (decompress, gather) name the same function for fp16 and bf16, so both run one kernel.
template <typename Args, void (*Item)(const Args&, int64_t, int64_t)>
__global__ void __launch_bounds__(kThreads) chunk_kernel(const Args a) {
  for_each_chunk(a.rows, a.chunks_per_row, [&](int64_t row, int64_t chunk) { Item(a, row, chunk); });
}

template <typename Op, typename Params>
perfkern_status_t launch(const Params& p, cudaStream_t stream) {
  const typename Op::Args a = Op::args(p);
  unsigned int blocks = 0;
  PERFKERN_RETURN_IF_ERROR(detail::grid_size(p.device, p.rows * a.chunks_per_row, kThreads, &blocks));
  return detail::launch(Op::kKernelName, chunk_kernel<typename Op::Args, Op::kItem>, blocks, kThreads, 0, stream, a);
}

// Op<T> for the element type T: operands(p) (the roles of its tensors), args(p) (its kernel arguments),
// kItem (the per-chunk function) and kKernelName.
template <template <typename> class Op, typename Params>
perfkern_status_t run(const Params* params, cudaStream_t stream) {
  using namespace perfkern::detail;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const Params& p = *params;
  const auto operands = Op<float>::operands(p);
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.rows, "rows"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.cols, "cols"));
  // An empty matrix has no elements to point at (torch gives its empty tensors NULL data pointers).
  const bool empty = p.rows == 0 || p.cols == 0;
  for (const Operand& t : operands) {
    if (t.required && !empty) {
      PERFKERN_RETURN_IF_ERROR(check_non_null(t.ptr, t.name));
    }
  }
  PERFKERN_RETURN_IF_ERROR(check_multiple_of(p.cols, 16, "cols"));
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  for (const Operand& t : operands) {
    if (t.ptr != nullptr) {
      PERFKERN_RETURN_IF_ERROR(check_row_stride(t.row_stride, t.width, t.width_expr, p.rows, t.stride_name));
    }
  }
  if (empty) {
    return PERFKERN_SUCCESS;
  }
  DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return launch<Op<float>>(p, stream);
    case PERFKERN_DTYPE_F16:
      return launch<Op<__half>>(p, stream);
    case PERFKERN_DTYPE_BF16:
      return launch<Op<__nv_bfloat16>>(p, stream);
  }
  return fail(PERFKERN_ERROR_INVALID_VALUE, "dtype: unsupported");
}

template <typename T>
using BitsOf = typename ElemBits<T>::Bits;

inline bool vec(const void* ptr, int64_t row_stride, size_t elem_size, int64_t rows) {
  return ptr != nullptr && detail::vector_friendly(ptr, row_stride, elem_size, rows);
}

// ---- compress: src -> values, meta, mask (each output optional) ------------------------------------------

template <typename T>
struct Compress {
  using Args = CompressArgs<BitsOf<T>>;
  static constexpr auto kItem = &compress_item<T>;  // compares magnitudes: fp16 and bf16 differ
  static constexpr const char* kKernelName = "sparse24 compress kernel";

  static std::array<Operand, 4> operands(const perfkern_sparse24_compress_params_t& p) {
    return {{{p.src, p.src_row_stride, p.cols, "cols", "src", "src_row_stride", true},
             {p.values, p.values_row_stride, p.cols / 2, "cols/2", "values", "values_row_stride", false},
             {p.meta, p.meta_row_stride, p.cols / 16, "cols/16", "meta", "meta_row_stride", false},
             {p.mask, p.mask_row_stride, p.cols, "cols", "mask", "mask_row_stride", false}}};
  }

  static Args args(const perfkern_sparse24_compress_params_t& p) {
    using Bits = BitsOf<T>;
    Args a;
    a.src = static_cast<const Bits*>(p.src);
    a.values = static_cast<Bits*>(p.values);
    a.meta = p.meta;
    a.mask = p.mask;
    a.rows = p.rows;
    a.chunks_per_row = p.cols / kChunkCols;
    a.src_row_stride = p.src_row_stride;
    a.values_row_stride = p.values_row_stride;
    a.meta_row_stride = p.meta_row_stride;
    a.mask_row_stride = p.mask_row_stride;
    a.src_vec = vec(p.src, p.src_row_stride, sizeof(Bits), p.rows);
    a.values_vec = vec(p.values, p.values_row_stride, sizeof(Bits), p.rows);
    a.mask_vec = vec(p.mask, p.mask_row_stride, 1, p.rows);
    return a;
  }

};

// ---- decompress: values, meta -> dense --------------------------------------------------------------------

template <typename T>
struct Decompress {
  using Args = DecompressArgs<BitsOf<T>>;
  static constexpr auto kItem = &decompress_item<BitsOf<T>>;
  static constexpr const char* kKernelName = "sparse24 decompress kernel";

  static std::array<Operand, 3> operands(const perfkern_sparse24_decompress_params_t& p) {
    return {{{p.values, p.values_row_stride, p.cols / 2, "cols/2", "values", "values_row_stride", true},
             {p.meta, p.meta_row_stride, p.cols / 16, "cols/16", "meta", "meta_row_stride", true},
             {p.dense, p.dense_row_stride, p.cols, "cols", "dense", "dense_row_stride", true}}};
  }

  static Args args(const perfkern_sparse24_decompress_params_t& p) {
    using Bits = BitsOf<T>;
    Args a;
    a.values = static_cast<const Bits*>(p.values);
    a.meta = p.meta;
    a.dense = static_cast<Bits*>(p.dense);
    a.rows = p.rows;
    a.chunks_per_row = p.cols / kChunkCols;
    a.values_row_stride = p.values_row_stride;
    a.meta_row_stride = p.meta_row_stride;
    a.dense_row_stride = p.dense_row_stride;
    a.values_vec = vec(p.values, p.values_row_stride, sizeof(Bits), p.rows);
    a.dense_vec = vec(p.dense, p.dense_row_stride, sizeof(Bits), p.rows);
    return a;
  }

};

// ---- gather: dense, meta -> values -------------------------------------------------------------------------

template <typename T>
struct Gather {
  using Args = GatherArgs<BitsOf<T>>;
  static constexpr auto kItem = &gather_item<BitsOf<T>>;
  static constexpr const char* kKernelName = "sparse24 gather kernel";

  static std::array<Operand, 3> operands(const perfkern_sparse24_gather_params_t& p) {
    return {{{p.dense, p.dense_row_stride, p.cols, "cols", "dense", "dense_row_stride", true},
             {p.meta, p.meta_row_stride, p.cols / 16, "cols/16", "meta", "meta_row_stride", true},
             {p.values, p.values_row_stride, p.cols / 2, "cols/2", "values", "values_row_stride", true}}};
  }

  static Args args(const perfkern_sparse24_gather_params_t& p) {
    using Bits = BitsOf<T>;
    Args a;
    a.dense = static_cast<const Bits*>(p.dense);
    a.meta = p.meta;
    a.values = static_cast<Bits*>(p.values);
    a.rows = p.rows;
    a.chunks_per_row = p.cols / kChunkCols;
    a.dense_row_stride = p.dense_row_stride;
    a.meta_row_stride = p.meta_row_stride;
    a.values_row_stride = p.values_row_stride;
    a.dense_vec = vec(p.dense, p.dense_row_stride, sizeof(Bits), p.rows);
    a.values_vec = vec(p.values, p.values_row_stride, sizeof(Bits), p.rows);
    return a;
  }

};

}  // namespace
}  // namespace sparse24
}  // namespace perfkern

extern "C" perfkern_status_t perfkern_sparse24_compress(const perfkern_sparse24_compress_params_t* params,
                                                        cudaStream_t stream) {
  return perfkern::sparse24::run<perfkern::sparse24::Compress>(params, stream);
}

extern "C" perfkern_status_t perfkern_sparse24_decompress(const perfkern_sparse24_decompress_params_t* params,
                                                          cudaStream_t stream) {
  return perfkern::sparse24::run<perfkern::sparse24::Decompress>(params, stream);
}

extern "C" perfkern_status_t perfkern_sparse24_gather(const perfkern_sparse24_gather_params_t* params,
                                                      cudaStream_t stream) {
  return perfkern::sparse24::run<perfkern::sparse24::Gather>(params, stream);
}
