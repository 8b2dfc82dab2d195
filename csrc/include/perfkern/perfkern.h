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
 * NaN ranks above every number. Any output pointer may be NULL (not written). In this and the other format
 * launchers (decompress, gather, meta_reorder) an empty matrix (rows or cols 0) is a no-op whose pointers may
 * all be NULL.
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

/* The sparse weight gradient, written straight into the compressed layout (no dense [n, k] intermediate):
 *   out[r, 2g + s] (+)= sum_m dy[m, r] x[m, 4g + idx_s(r, g)]     s = 0, 1
 * i.e. dWs = mask (.) (dy^T . x) gathered onto meta, for Ws [n, k] 2:4 along k, accumulated in fp32.
 *   dy       [m, n]    row stride dy_row_stride, unit column stride
 *   x        [m, k]    row stride x_row_stride, unit column stride
 *   meta     [n, k/16] canonical int16 metadata of Ws, row stride meta_row_stride
 *   out      [n, k/2]  row stride out_row_stride, unit column stride, of out_dtype: dtype or F32
 * dtype: F16 or BF16 (tensor cores, fp32 accumulation) or F32 (CUDA cores, exact fp32 FMAs), shared by dy and x.
 * accumulate = 1 adds the gradient to out (gradient accumulation; the sum is formed in fp32 and rounded once),
 * 0 overwrites it. k % 16 == 0; m, n any (m = 0 gives zeros, or leaves out as it is when accumulating). */
typedef struct {
  const void* dy;
  const void* x;
  const int16_t* meta;
  void* out;
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t dy_row_stride;
  int64_t x_row_stride;
  int64_t meta_row_stride;
  int64_t out_row_stride;
  int accumulate;
  perfkern_dtype_t dtype;
  perfkern_dtype_t out_dtype;
  int device;
} perfkern_sparse24_weight_grad_params_t;

PERFKERN_API perfkern_status_t perfkern_sparse24_weight_grad(const perfkern_sparse24_weight_grad_params_t* params,
                                                             cudaStream_t stream);

/* The backward copy of SLoPe's double pruning, from the weight in its canonical form: Ws [n, k] (values, meta;
 * 2:4 along k) transposed and pruned again 2:4 along n, compressed: bwd_values [k, n/2], bwd_meta [k, n/16]
 * (Wbwd^T, as perfkern_sparse24_mm takes it for dx = dy . Wbwd).
 *   choose_mask = 1: bwd_meta is written: each group of 4 along n keeps the 2 entries of Ws^T with the largest
 *                    magnitude (ties to the lower index, NaN above every number), exactly as compress of the
 *                    dense Ws^T would choose (-0.0 written as +0.0);
 *   choose_mask = 0: bwd_meta is read (a mask chosen earlier) and bwd_values = the entries of Ws^T it names
 *                    (the gather, bit for bit).
 * n % 16 == 0 and k % 16 == 0; dtype any of F32, F16, BF16 (bits are moved, no arithmetic). */
typedef struct {
  const void* values;
  const int16_t* meta;
  void* bwd_values;
  int16_t* bwd_meta;
  int64_t n;
  int64_t k;
  int64_t values_row_stride;
  int64_t meta_row_stride;
  int64_t bwd_values_row_stride;
  int64_t bwd_meta_row_stride;
  int choose_mask;
  perfkern_dtype_t dtype;
  int device;
} perfkern_sparse24_transpose_prune_params_t;

PERFKERN_API perfkern_status_t perfkern_sparse24_transpose_prune(
    const perfkern_sparse24_transpose_prune_params_t* params, cudaStream_t stream);

/* PERA, polynomial-expanded LoRA (arXiv 2604.11841). Rows a_i of A [r, k], columns b_i of B [n, r], the pairs
 * P of the mode in row-major upper-triangle order (i <= j for FULL, i = j for SQUARE, i < j for CROSS), h [|P|]:
 *   A^ = [A ; h_p (a_i (.) a_j)]  [r', k]      B^ = [B , b_i (.) b_j]  [n, r']      r' = r + |P|
 *   out (+)= scale . (x . A^T) . B^T           Z = x . A^T  [m, r'] (fp32, kept for the backward)
 * A^ and B^ are generated tile by tile on chip and never written to memory. 1 <= r <= 128. */
typedef enum { PERFKERN_PERA_FULL = 0, PERFKERN_PERA_SQUARE = 1, PERFKERN_PERA_CROSS = 2 } perfkern_pera_mode_t;

/* r' = r + |P| for rank r in mode (0 for a negative r or an unknown mode). */
PERFKERN_API int64_t perfkern_pera_expanded_rank(int64_t r, perfkern_pera_mode_t mode);

/* x [m, k], lora_a [r, k], lora_b [n, r] (row strides given, unit column strides), h [|P|] contiguous (NULL when
 * |P| = 0), all of dtype (F32: exact fp32 FMAs; F16/BF16: tensor cores, fp32 accumulation); out [m, n] of dtype,
 * accumulate = 1 adds the term to out (y = base(x) computed by the caller, then y += adapter), 0 overwrites;
 * z [m, r'] fp32 (required: the intermediate between the two products, and the backward's input). */
typedef struct {
  const void* x;
  const void* lora_a;
  const void* lora_b;
  const void* h;
  void* out;
  float* z;
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t r;
  float scale;
  int accumulate;
  int64_t x_row_stride;
  int64_t a_row_stride;
  int64_t b_row_stride;
  int64_t out_row_stride;
  int64_t z_row_stride;
  perfkern_pera_mode_t mode;
  perfkern_dtype_t dtype;
  int device;
} perfkern_pera_forward_params_t;

PERFKERN_API perfkern_status_t perfkern_pera_forward(const perfkern_pera_forward_params_t* params,
                                                     cudaStream_t stream);

/* The merged weight: out [n, k] = scale . B^ . A^ (so that inference after a merge costs nothing), both factors
 * generated tile by tile; lora_a [r, k], lora_b [n, r], h as in the forward, out of dtype. */
typedef struct {
  const void* lora_a;
  const void* lora_b;
  const void* h;
  void* out;
  int64_t n;
  int64_t k;
  int64_t r;
  float scale;
  int64_t a_row_stride;
  int64_t b_row_stride;
  int64_t out_row_stride;
  perfkern_pera_mode_t mode;
  perfkern_dtype_t dtype;
  int device;
} perfkern_pera_delta_weight_params_t;

PERFKERN_API perfkern_status_t perfkern_pera_delta_weight(const perfkern_pera_delta_weight_params_t* params,
                                                          cudaStream_t stream);

/* The gradients of the adapter term for the upstream gradient grad [m, n]: with G_s = scale . grad,
 *   dZ = G_s . B^    dx = dZ . A^    dA^ = dZ^T . x    dB^ = G_s^T . Z
 * folded on chip into dA [r, k], dB [n, r] and dh [|P|] (a pair p = (i, j) sends dB^[:, r+p] (.) b_j to dB[:, i]
 * and (.) b_i to dB[:, j], h_p dA^[r+p] (.) a_j to dA[i] and (.) a_i to dA[j], and dh_p = sum_k dA^[r+p, k]
 * a_i[k] a_j[k]). Inputs as in the forward; z is the forward's Z, or NULL to recompute it. Each of dx, d_a, d_b,
 * d_h may be NULL (not computed); outputs have the inputs' dtype, unit column strides, d_h contiguous.
 * accumulate = 1 adds the term's dx to dx (the base layer's dx already there), 0 overwrites it.
 * workspace: perfkern_pera_backward_workspace_size bytes (16-byte aligned), private to the call; the reductions
 * over m are split into a fixed number of parts that depends on the shape only, and summed in a fixed order:
 * results are deterministic. */
typedef struct {
  const void* grad;
  const void* x;
  const void* lora_a;
  const void* lora_b;
  const void* h;
  const float* z;
  void* dx;
  void* d_a;
  void* d_b;
  void* d_h;
  int accumulate;
  void* workspace;
  int64_t workspace_bytes;
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t r;
  float scale;
  int64_t grad_row_stride;
  int64_t x_row_stride;
  int64_t a_row_stride;
  int64_t b_row_stride;
  int64_t z_row_stride;
  int64_t dx_row_stride;
  int64_t d_a_row_stride;
  int64_t d_b_row_stride;
  perfkern_pera_mode_t mode;
  perfkern_dtype_t dtype;
  int device;
} perfkern_pera_backward_params_t;

/* *bytes = the workspace perfkern_pera_backward needs for these params (pointers are not read). */
PERFKERN_API perfkern_status_t perfkern_pera_backward_workspace_size(const perfkern_pera_backward_params_t* params,
                                                                     int64_t* bytes);
PERFKERN_API perfkern_status_t perfkern_pera_backward(const perfkern_pera_backward_params_t* params,
                                                      cudaStream_t stream);

/* Dendrite-error correlation (Cascade-Correlation statistics, batched over layers). For candidate outputs
 * V [layers, p, c, n] and the neurons' errors E [layers, p, n], per (layer, candidate, neuron), population
 * statistics over the p tokens:
 *   v_mean = mean V   e_mean = mean E   cov = mean (V - v_mean)(E - e_mean)
 *   v_var = mean (V - v_mean)^2          e_var = mean (E - e_mean)^2
 * computed stably: every sum is of values shifted by the layer's first token, in chunks whose centred sums are
 * merged with the pairwise formulas of Chan, Golub & LeVeque; nothing mixes neurons, so a NaN stays in its own.
 * The score is cov (COVARIANCE) or cov / sqrt(v_var e_var) (PEARSON; 0 where that is 0, NaN kept). */
typedef enum { PERFKERN_DENDRITE_COVARIANCE = 0, PERFKERN_DENDRITE_PEARSON = 1 } perfkern_dendrite_mode_t;

/* One set of statistics, fp32, contiguous: v_mean, cov, v_var [layers, c, n]; e_mean, e_var [layers, n];
 * count: the tokens they cover (a host value). */
typedef struct {
  float* v_mean;
  float* cov;
  float* v_var;
  float* e_mean;
  float* e_var;
  double count;
} perfkern_dendrite_moments_t;

/* values [layers, p, c, n] (strides values_stride_l, _p, _c; unit along n), errors [layers, p, n] (strides
 * errors_stride_l, _p), one dtype of F32/F16/BF16 -> stats (all five written; its count is not read), score
 * [layers, c, n] fp32 (or NULL). One launch over all layers reads V and E once; when the layers, candidates and
 * neurons alone are too few to fill a GPU the tokens are split too, the parts merged by a second launch in a
 * fixed order (deterministic), through workspace (perfkern_dendrite_correlation_workspace_size bytes, 16-byte
 * aligned; NULL with 0 bytes: no split). p >= 1, c >= 1. */
typedef struct {
  const void* values;
  const void* errors;
  perfkern_dendrite_moments_t stats;
  float* score;
  void* workspace;
  int64_t workspace_bytes;
  int64_t layers;
  int64_t p;
  int64_t c;
  int64_t n;
  int64_t values_stride_l;
  int64_t values_stride_p;
  int64_t values_stride_c;
  int64_t errors_stride_l;
  int64_t errors_stride_p;
  perfkern_dendrite_mode_t mode;
  perfkern_dtype_t dtype;
  int device;
} perfkern_dendrite_correlation_params_t;

PERFKERN_API perfkern_status_t perfkern_dendrite_correlation_workspace_size(
    const perfkern_dendrite_correlation_params_t* params, int64_t* bytes);
PERFKERN_API perfkern_status_t perfkern_dendrite_correlation(const perfkern_dendrite_correlation_params_t* params,
                                                             cudaStream_t stream);

/* The candidate gradient, one streaming pass over V and E:
 *   out [layers, p, c, n] = alpha (.) (E - e_mean) + beta (.) (V - v_mean)
 * with per-(layer, c, n) coefficients from one of three sources:
 *   COEFFICIENTS  alpha, beta [layers, c, n] given (beta NULL: 0, and V is not read);
 *   UPSTREAM      from g = upstream [layers, c, n], the gradient of a loss with respect to the score of `batch`:
 *                 covariance: alpha = g / p, beta = 0; Pearson: with sd = sqrt(v_var e_var), alpha = g / (p sd),
 *                 beta = -g score / (p v_var), both 0 where sd = 0;
 *   CASCADE       as UPSTREAM with g = -sign(upstream), where upstream is the running score (Cascade-Correlation:
 *                 the descent direction of -sum |score|), and every non-finite result written as 0 (a NaN error
 *                 stays out of the candidates, which share their inputs).
 * batch: the statistics of the tokens the score covers (from perfkern_dendrite_correlation; count = p of the
 * score, which may exceed this call's p when several calls or ranks make up the batch); e_mean and v_mean are
 * always read, cov, v_var, e_var for UPSTREAM/CASCADE. out has values' dtype, strides out_stride_l, _p, _c,
 * unit along n. */
typedef enum {
  PERFKERN_DENDRITE_GRAD_COEFFICIENTS = 0,
  PERFKERN_DENDRITE_GRAD_UPSTREAM = 1,
  PERFKERN_DENDRITE_GRAD_CASCADE = 2
} perfkern_dendrite_grad_source_t;

typedef struct {
  const void* values;
  const void* errors;
  perfkern_dendrite_moments_t batch;
  const float* alpha;
  const float* beta;
  const float* upstream;
  void* out;
  int64_t layers;
  int64_t p;
  int64_t c;
  int64_t n;
  int64_t values_stride_l;
  int64_t values_stride_p;
  int64_t values_stride_c;
  int64_t errors_stride_l;
  int64_t errors_stride_p;
  int64_t out_stride_l;
  int64_t out_stride_p;
  int64_t out_stride_c;
  perfkern_dendrite_grad_source_t source;
  perfkern_dendrite_mode_t mode;
  perfkern_dtype_t dtype;
  int device;
} perfkern_dendrite_grad_params_t;

PERFKERN_API perfkern_status_t perfkern_dendrite_grad(const perfkern_dendrite_grad_params_t* params,
                                                      cudaStream_t stream);

/* Folds one batch's statistics into the running state of a dendrite phase, in place (the semantics of
 * perfkern.dendrites.CorrelationState.fold):
 *   running: f = batch.count / max(1, running.count + batch.count) for batch_number <= window (the cumulative
 *            statistics of every token so far), f = 1 - beta afterwards (an exponential average);
 *   epoch:   f = batch.count / max(1, epoch.count + batch.count) (cumulative; NULL pointers: no epoch state);
 * each merged as a mixture of weights (1 - f, f): delta = mean_b - mean_a, mean = mean_a + f delta,
 * var = (1 - f) var_a + f var_b + f (1 - f) delta^2, cov = (1 - f) cov_a + f cov_b + f (1 - f) delta_v delta_e.
 * An entry whose merged value is not finite keeps its old value, and a batch of count 0 changes nothing, so one
 * bad batch does not poison a neuron. running_score [layers, c, n] (or NULL) receives the updated running score.
 * The counts are host values: the caller adds batch.count to running.count and epoch.count afterwards.
 * batch_number: this batch's number in the phase, from 1. */
typedef struct {
  perfkern_dendrite_moments_t batch;
  perfkern_dendrite_moments_t running;
  perfkern_dendrite_moments_t epoch;
  float* running_score;
  int64_t batch_number;
  int64_t window;
  double beta;
  int64_t layers;
  int64_t c;
  int64_t n;
  perfkern_dendrite_mode_t mode;
  int device;
} perfkern_dendrite_state_update_params_t;

PERFKERN_API perfkern_status_t perfkern_dendrite_state_update(const perfkern_dendrite_state_update_params_t* params,
                                                              cudaStream_t stream);

/* ---- CPU kernels (every build; no stream, no device) ------------------------------------------------------
 *
 * CPU launchers run on the calling thread and on a persistent pool of worker threads that the library starts on
 * first use and keeps: a call runs on at most num_threads threads (the caller included) and returns when they
 * are done; nothing allocates once a shape has been seen (the pool keeps one scratch buffer, grown when a call
 * needs more). Calls from several threads at once are serialised. The instruction set is chosen at run time
 * (AVX-512 with avx512_bf16 dot products, AVX-512, AVX2 + FMA, or portable C++); `isa` forces one, for tests. */

/* Which kernels a CPU launcher runs. AUTO: the best the CPU has. A forced ISA the CPU lacks (or a build that
 * did not compile it, e.g. on a non-x86 machine) gives PERFKERN_ERROR_NOT_SUPPORTED. AVX512_BF16 differs from
 * AVX512 only for bf16 operands (vdpbf16ps); other dtypes run the AVX512 kernels. */
typedef enum {
  PERFKERN_CPU_ISA_AUTO = 0,
  PERFKERN_CPU_ISA_SCALAR = 1,
  PERFKERN_CPU_ISA_AVX2 = 2,
  PERFKERN_CPU_ISA_AVX512 = 3,
  PERFKERN_CPU_ISA_AVX512_BF16 = 4
} perfkern_cpu_isa_t;

/* The best ISA of this CPU that the library was built with (never AUTO). */
PERFKERN_API perfkern_cpu_isa_t perfkern_cpu_isa(void);
/* "scalar", "avx2", "avx512", "avx512_bf16" ("auto" for AUTO, "unknown" otherwise). */
PERFKERN_API const char* perfkern_cpu_isa_name(perfkern_cpu_isa_t isa);
/* Whether this CPU and build can run `isa` (AUTO and SCALAR: always). */
PERFKERN_API int perfkern_cpu_isa_supported(perfkern_cpu_isa_t isa);
/* What runs the CPU launchers' threads now: "openmp" (the OpenMP runtime of the process, so a caller that uses
 * OpenMP itself, as torch does, shares its threads) or "pool" (the library's own threads: builds without OpenMP,
 * and a forked child). */
PERFKERN_API const char* perfkern_cpu_threading(void);
/* Declares this process a forked child: from now on the CPU launchers run on the library's own pool (the OpenMP
 * threads were the parent's, and OpenMP in a child of a process that used them can hang). A handler registered
 * when the library loads does this at every fork; a caller that loads the library only after a fork (while the
 * parent ran OpenMP, e.g. through torch) calls it itself. */
PERFKERN_API void perfkern_cpu_forked_child(void);

/* 2:4 sparse product on the CPU, with bias and a fused low-rank term:
 *   out[m, n] = sum_k x[m, k] Ws[n, k] + bias[n] + scale * sum_j lora_t[m, j] lora_b[n, j]
 * accumulated in fp32 (the low-rank term joins the same accumulator; no M x N intermediate).
 *   x        [m, k]    row stride x_row_stride, unit column stride
 *   values   [n, k/2]  Ws's kept values (canonical 2:4 format), row stride values_row_stride
 *   meta     [n, k/16] Ws's canonical int16 metadata, row stride meta_row_stride; every nibble must name two
 *                      indices first < second (as compress writes them); other nibbles give an unspecified
 *                      (but memory-safe) result
 *   bias     [n]       stride bias_stride, or NULL
 *   lora_t   [m, r]    strides t_stride0, t_stride1 } both NULL, or both set when r > 0
 *   lora_b   [n, r]    strides b_stride0, b_stride1 }
 *   out      [m, n]    row stride out_row_stride, unit column stride; must not overlap an input
 * dtype: F32, BF16 or F16, shared by every tensor. k % 16 == 0; m, n, r >= 0, any. Input strides are any value
 * >= 0 (0 broadcasts a row); out's row stride is at least n.
 * num_threads >= 1: the most threads the call runs on (the caller's thread included); small problems use fewer. */
typedef struct {
  const void* x;
  const void* values;
  const int16_t* meta;
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
  int64_t meta_row_stride;
  int64_t bias_stride;
  int64_t t_stride0;
  int64_t t_stride1;
  int64_t b_stride0;
  int64_t b_stride1;
  int64_t out_row_stride;
  perfkern_dtype_t dtype;
  int num_threads;
  perfkern_cpu_isa_t isa; /* AUTO (0) unless a test or benchmark pins one */
} perfkern_sparse24_mm_cpu_params_t;

PERFKERN_API perfkern_status_t perfkern_sparse24_mm_cpu(const perfkern_sparse24_mm_cpu_params_t* params);

/* The dense product of the same kernels, same SIMD and same threading: out = x . w^T + bias + scale * lora_t .
 * lora_b^T with w [n, k] dense (row stride w_row_stride). What sparsity buys is the ratio of the two launchers'
 * times; k % 16 == 0 as for the sparse product. */
typedef struct {
  const void* x;
  const void* w;
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
  int64_t w_row_stride;
  int64_t bias_stride;
  int64_t t_stride0;
  int64_t t_stride1;
  int64_t b_stride0;
  int64_t b_stride1;
  int64_t out_row_stride;
  perfkern_dtype_t dtype;
  int num_threads;
  perfkern_cpu_isa_t isa;
} perfkern_dense_mm_cpu_params_t;

PERFKERN_API perfkern_status_t perfkern_dense_mm_cpu(const perfkern_dense_mm_cpu_params_t* params);

#ifdef __cplusplus
}
#endif

#endif /* PERFKERN_PERFKERN_H_ */
