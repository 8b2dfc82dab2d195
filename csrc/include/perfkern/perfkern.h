/*
 * perfkern: torch-free C API of the core (CUDA kernels, and CPU kernels).
 *
 * Every CUDA launcher takes a params struct (device pointers, sizes, int64 strides in elements) and a
 * cudaStream_t, enqueues its work on that stream and returns a status code. Nothing here allocates,
 * synchronises or touches a framework: callers own memory and ordering.
 *
 * The header compiles without the CUDA toolkit: cudaStream_t is then declared here, as the CUDA runtime
 * declares it. A library built without CUDA keeps the same ABI; its CUDA launchers return
 * PERFKERN_ERROR_NOT_SUPPORTED. The emulated build (PERFKERN_EMULATE) keeps it too: its launchers take host
 * pointers, accept any stream and run their kernels on the CPU before they return (perfkern_build_flavor()
 * says which build a program linked).
 *
 * The 2:4 format (canonical, row-major, W is [rows, cols] and 2:4 along cols):
 *   values [rows, cols/2]  the kept values of each group of 4 in column order (W's dtype)
 *   meta   [rows, cols/16] int16; group g of a row is the nibble at bits 4*(g % 4) of meta[row, g / 4];
 *                          low 2 bits = first kept index, high 2 bits = second, first < second.
 * cols must be a multiple of 16.
 */
#ifndef PERFKERN_PERFKERN_H_
#define PERFKERN_PERFKERN_H_

#include <stdint.h>

#if defined(__has_include)
#if __has_include(<cuda_runtime_api.h>)
#include <cuda_runtime_api.h>
#define PERFKERN_HAVE_CUDA_RUNTIME_API 1
#endif
#endif
#ifndef PERFKERN_HAVE_CUDA_RUNTIME_API
/* The CUDA runtime's own declaration (driver_types.h), so both headers may be seen in one program. */
typedef struct CUstream_st* cudaStream_t;
#endif

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define PERFKERN_API __declspec(dllexport)
#else
#define PERFKERN_API __attribute__((visibility("default")))
#endif

#define PERFKERN_VERSION_MAJOR 0
#define PERFKERN_VERSION_MINOR 1
#define PERFKERN_VERSION_PATCH 0

typedef enum {
  PERFKERN_SUCCESS = 0,
  PERFKERN_ERROR_INVALID_VALUE = 1, /* a size, stride, pointer or dtype the launcher cannot take */
  PERFKERN_ERROR_NOT_SUPPORTED = 2, /* valid input, but not built or not supported on this device */
  PERFKERN_ERROR_NO_DEVICE = 3,     /* no CUDA device or no usable driver */
  PERFKERN_ERROR_CUDA = 4           /* the CUDA runtime reported an error; see perfkern_last_error() */
} perfkern_status_t;

typedef enum {
  PERFKERN_DTYPE_F32 = 0,
  PERFKERN_DTYPE_F16 = 1,
  PERFKERN_DTYPE_BF16 = 2
} perfkern_dtype_t;

typedef struct {
  char name[256];
  int major; /* compute capability */
  int minor;
  int multiprocessor_count;
  int64_t total_global_mem;
} perfkern_device_info_t;

/* "0.1.0". */
PERFKERN_API const char* perfkern_version(void);
/* Architectures compiled into this library, e.g. "80;90a" (the emulated build, whose one binary serves an
 * emulated sm_80 or sm_90, says "80;90a"); "" in a build without CUDA. */
PERFKERN_API const char* perfkern_cuda_archs(void);
/* Which build this is: "cuda" (CUDA kernels for a GPU), "emulated" (the CUDA kernels executed on the CPU,
 * PERFKERN_EMULATE) or "cpu" (no CUDA kernels: the CUDA launchers return PERFKERN_ERROR_NOT_SUPPORTED). The
 * CPU kernels are in every build. */
PERFKERN_API const char* perfkern_build_flavor(void);
/* A static English description of a status code. */
PERFKERN_API const char* perfkern_status_string(perfkern_status_t status);
/* The message of the last failure on the calling thread ("" if none). */
PERFKERN_API const char* perfkern_last_error(void);

/* Number of usable CUDA devices. *count is 0 and PERFKERN_ERROR_NO_DEVICE is returned when there is
 * no device or no driver. */
PERFKERN_API perfkern_status_t perfkern_device_count(int* count);
PERFKERN_API perfkern_status_t perfkern_device_info(int device, perfkern_device_info_t* info);

/* Select the 2 of every 4 entries (along cols) with the largest |score|; ties go to the lower index,
 * NaN ranks above every number. Any output pointer may be NULL (not written).
 *   src    [rows, cols]    scores / the dense matrix (dtype)
 *   values [rows, cols/2]  kept entries of src in column order, -0.0 written as +0.0 (dtype)
 *   meta   [rows, cols/16] int16 canonical metadata
 *   mask   [rows, cols]    uint8 0/1 */
typedef struct {
  const void* src;
  void* values;
  int16_t* meta;
  uint8_t* mask;
  int64_t rows;
  int64_t cols;
  int64_t src_row_stride; /* elements; the column stride is 1 for every tensor here */
  int64_t values_row_stride;
  int64_t meta_row_stride;
  int64_t mask_row_stride;
  perfkern_dtype_t dtype;
  int device;
} perfkern_sparse24_compress_params_t;

PERFKERN_API perfkern_status_t perfkern_sparse24_compress(const perfkern_sparse24_compress_params_t* params,
                                                          cudaStream_t stream);

/* dense [rows, cols] from values [rows, cols/2] and meta [rows, cols/16]. Position p of a group holds
 * the second value if p is the second index, else the first value if p is the first index, else +0.0
 * (so malformed metadata still decodes deterministically). */
typedef struct {
  const void* values;
  const int16_t* meta;
  void* dense;
  int64_t rows;
  int64_t cols;
  int64_t values_row_stride;
  int64_t meta_row_stride;
  int64_t dense_row_stride;
  perfkern_dtype_t dtype;
  int device;
} perfkern_sparse24_decompress_params_t;

PERFKERN_API perfkern_status_t perfkern_sparse24_decompress(const perfkern_sparse24_decompress_params_t* params,
                                                            cudaStream_t stream);

/* values [rows, cols/2] = the entries of dense [rows, cols] at the positions meta names, in column order
 * (the adjoint of decompress; -0.0 is kept as is). */
typedef struct {
  const void* dense;
  const int16_t* meta;
  void* values;
  int64_t rows;
  int64_t cols;
  int64_t dense_row_stride;
  int64_t meta_row_stride;
  int64_t values_row_stride;
  perfkern_dtype_t dtype;
  int device;
} perfkern_sparse24_gather_params_t;

PERFKERN_API perfkern_status_t perfkern_sparse24_gather(const perfkern_sparse24_gather_params_t* params,
                                                        cudaStream_t stream);

/* Canonical int16 metadata [rows, meta_cols] <-> the layout of torch's semi-structured CUTLASS backend
 * (CUTLASS sm80 ColumnMajorInterleaved<2> with rows permuted in groups of 32 and 2x2 blocks swapped).
 * Both buffers are contiguous, rows * meta_cols int16. rows % 32 == 0 and meta_cols % 4 == 0. */
typedef struct {
  const int16_t* src;
  int16_t* dst;
  int64_t rows;
  int64_t meta_cols;
  int to_cutlass; /* 1: canonical -> CUTLASS, 0: CUTLASS -> canonical */
  int device;
} perfkern_sparse24_meta_reorder_params_t;

PERFKERN_API perfkern_status_t perfkern_sparse24_meta_reorder(const perfkern_sparse24_meta_reorder_params_t* params,
                                                              cudaStream_t stream);

/* The metadata layout read by perfkern_sparse24_mm ("mma layout"), derived from canonical meta
 * [rows, meta_cols] (contiguous; meta_cols = K/16 must be even, i.e. K % 32 == 0) and private to that
 * kernel: derive it once, cache it, never store it.
 *
 * 32-bit words, in blocks of 32 rows x 32 K columns: word ((b * (meta_cols/2) + s) * 32 + lane), with
 * lane = 4*g + t (g < 8, t < 4), r = 32*b + 16*(t/2) + g and c = 2*s + t%2, holds canonical
 * meta[r, c] in its low 16 bits and meta[r + 8, c] in its high 16 bits. Rows >= rows (the padding of
 * the last block) read as 0x4444 (indices 0 and 1 in every group). Each lane of a warp thus loads the
 * metadata register of mma.sp m16n8k32 for two 16-row tiles (sparsity selectors 0 and 1) with one
 * coalesced 128-byte load per block and k32 step.
 *
 * Size: perfkern_sparse24_mma_meta_size(rows, meta_cols) = ceil(rows / 32) * 32 * meta_cols int16
 * elements (rows padded to a multiple of 32). */
PERFKERN_API int64_t perfkern_sparse24_mma_meta_size(int64_t rows, int64_t meta_cols);

/* src: canonical int16 [rows, meta_cols], contiguous. dst: the mma layout, a 16-byte aligned buffer of
 * perfkern_sparse24_mma_meta_size(rows, meta_cols) int16, distinct from src. */
typedef struct {
  const int16_t* src;
  int16_t* dst;
  int64_t rows;
  int64_t meta_cols;
  int device;
} perfkern_sparse24_meta_to_mma_params_t;

PERFKERN_API perfkern_status_t perfkern_sparse24_meta_to_mma(const perfkern_sparse24_meta_to_mma_params_t* params,
                                                             cudaStream_t stream);

/* Which kernel perfkern_sparse24_mm runs. AUTO: wgmma.sp on sm_90 devices when m > 32 and the library
 * holds sm_90a code, mma.sp otherwise. MMA_SP: the mma.sp kernel (sm_80 and newer). WGMMA_SP: the
 * wgmma.sp kernel (sm_90 devices with sm_90a code; PERFKERN_ERROR_NOT_SUPPORTED elsewhere). */
typedef enum {
  PERFKERN_SPARSE24_MM_AUTO = 0,
  PERFKERN_SPARSE24_MM_MMA_SP = 1,
  PERFKERN_SPARSE24_MM_WGMMA_SP = 2
} perfkern_sparse24_mm_kernel_t;

/* 2:4 sparse GEMM on sparse tensor cores (mma.sp on sm_80 and newer, wgmma.sp on sm_90a), with bias and a
 * fused low-rank term:
 *   out[m, n] = sum_k x[m, k] Ws[n, k] + bias[n] + scale * sum_j lora_t[m, j] lora_b[n, j]
 * accumulated in fp32 (the low-rank term joins the same accumulator; no M x N intermediate).
 *   x        [m, k]    row stride x_row_stride, unit column stride
 *   values   [n, k/2]  Ws's kept values (canonical), row stride values_row_stride
 *   meta_mma           Ws's metadata in the mma layout (perfkern_sparse24_meta_to_mma with rows = n,
 *                      meta_cols = k/16); 16-byte aligned
 *   bias     [n]       stride bias_stride, or NULL
 *   lora_t   [m, r]    strides t_stride0, t_stride1 } both NULL, or both set when r > 0
 *   lora_b   [n, r]    strides b_stride0, b_stride1 }
 *   out      [m, n]    row stride out_row_stride, unit column stride
 * dtype: F16 or BF16, shared by every tensor (F32 gives PERFKERN_ERROR_NOT_SUPPORTED). k % 32 == 0;
 * m, n, r any. x and values take 16-byte vector loads when their pointers are 16-byte aligned and
 * their row strides multiples of 8; otherwise a slower element-wise path. */
typedef struct {
  const void* x;
  const void* values;
  const int16_t* meta_mma;
  const void* bias;
  const void* lora_t;
  const void* lora_b;
  void* out;
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t r;
  float scale;
  int64_t x_row_stride;
  int64_t values_row_stride;
  int64_t bias_stride;
  int64_t t_stride0;
  int64_t t_stride1;
  int64_t b_stride0;
  int64_t b_stride1;
  int64_t out_row_stride;
  perfkern_dtype_t dtype;
  int device;
  perfkern_sparse24_mm_kernel_t kernel; /* AUTO (0) unless a test or benchmark pins one */
} perfkern_sparse24_mm_params_t;

PERFKERN_API perfkern_status_t perfkern_sparse24_mm(const perfkern_sparse24_mm_params_t* params, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* PERFKERN_PERFKERN_H_ */
