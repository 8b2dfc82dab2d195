// perfkern_dendrite_grad: the candidate gradient, one streaming pass over V and E (and the output):
//   out = alpha (.) (E - e_mean) + beta (.) (V - v_mean)
// The coefficients of a thread's (candidate, neuron) columns are formed once, in registers, from the given
// tensors or from the upstream gradient of the score and the batch statistics (the derivative of cov and of
// cov / (sigma_V sigma_E) with respect to V), so the fused path reads no coefficient tensor. A CTA owns one layer,
// 32 neurons x CT candidates and a block of tokens, its warps taking every 8th token.
#include <cmath>
#include <cstdint>
#include <string>

#include "common/cuda_internal.h"
#include "common/kernel.cuh"
#include "dendrite/dendrite.cuh"
#include "perfkern/perfkern.h"

namespace perfkern {
namespace dendrite {
namespace {

constexpr int64_t kRowsPerCta = 256;
constexpr float kTiny = 1.17549435e-38f;  // the smallest normal fp32, as torch.finfo(float32).tiny

struct GradArgs {
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
  int64_t vs_l;
  int64_t vs_p;
  int64_t vs_c;
  int64_t es_l;
  int64_t es_p;
  int64_t os_l;
  int64_t os_p;
  int64_t os_c;
  int64_t c_tiles;
  perfkern_dendrite_grad_source_t source;
  perfkern_dendrite_mode_t mode;
  bool reads_v;
};

#if PERFKERN_DEVICE_CODE

// (alpha, beta) of one (layer, candidate, neuron) column at `at`.
__device__ __forceinline__ void coefficients(const GradArgs& a, int64_t at, int64_t layer_n, float& alpha,
                                             float& beta) {
  if (a.source == PERFKERN_DENDRITE_GRAD_COEFFICIENTS) {
    alpha = a.alpha[at];
    beta = a.beta != nullptr ? a.beta[at] : 0.0f;
    return;
  }
  float g = a.upstream[at];
  if (a.source == PERFKERN_DENDRITE_GRAD_CASCADE) {
    g = g > 0.0f ? -1.0f : (g < 0.0f ? 1.0f : -0.0f);  // -sign(g), as torch: sign(NaN) = 0
  }
  const float p = static_cast<float>(a.batch.count);
  if (a.mode == PERFKERN_DENDRITE_COVARIANCE) {
    alpha = g / p;
    beta = 0.0f;
    return;
  }
  const float v_var = a.batch.v_var[at];
  const float e_var = a.batch.e_var[layer_n];
  const float sd = sqrtf(v_var * e_var);
  if (!(sd > 0.0f)) {
    alpha = 0.0f;
    beta = 0.0f;
    return;
  }
  const float s = score(a.batch.cov[at], v_var, e_var, PERFKERN_DENDRITE_PEARSON);
  alpha = g / (p * fmaxf(sd, kTiny));
  beta = -g * s / (p * fmaxf(v_var, kTiny));
}

template <typename T, int CT>
__global__ void __launch_bounds__(kThreads) grad_kernel(const GradArgs a) {
  // Tokens a warp loads before its first store: 10 to 32 loads in flight per thread, in 128 registers.
  constexpr int kUnroll = CT >= 4 ? 2 : 16 / CT;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x % a.c_tiles) * CT;
  const int64_t nn = static_cast<int64_t>(blockIdx.x / a.c_tiles) * 32 + lane;
  const int64_t layer = blockIdx.z;
  if (nn >= a.n) {
    return;
  }
  bool c_in[CT];
  float alpha[CT], beta[CT], v_mean[CT];
#pragma unroll
  for (int c = 0; c < CT; ++c) {
    c_in[c] = c0 + c < a.c;
    const int64_t at = (layer * a.c + c0 + c) * a.n + nn;
    alpha[c] = beta[c] = v_mean[c] = 0.0f;
    if (c_in[c]) {
      coefficients(a, at, layer * a.n + nn, alpha[c], beta[c]);
      if (a.reads_v) {
        v_mean[c] = a.batch.v_mean[at];
      }
    }
  }
  const float e_mean = a.batch.e_mean[layer * a.n + nn];
  const T* v = static_cast<const T*>(a.values) + layer * a.vs_l + c0 * a.vs_c + nn;
  const T* e = static_cast<const T*>(a.errors) + layer * a.es_l + nn;
  T* out = static_cast<T*>(a.out) + layer * a.os_l + c0 * a.os_c + nn;
  const bool cascade = a.source == PERFKERN_DENDRITE_GRAD_CASCADE;
  for (int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRowsPerCta; row0 < a.p;
       row0 += static_cast<int64_t>(gridDim.y) * kRowsPerCta) {
    const int64_t row_end = row0 + kRowsPerCta < a.p ? row0 + kRowsPerCta : a.p;
    // kUnroll rows a warp: their loads are all issued before the first store.
    for (int64_t first = row0 + warp; first < row_end; first += kUnroll * kWarps) {
      float de[kUnroll];
      float dv[kUnroll][CT];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t row = first + u * kWarps;
        const bool in = row < row_end;
        de[u] = in ? load(e + row * a.es_p) - e_mean : 0.0f;
#pragma unroll
        for (int c = 0; c < CT; ++c) {
          dv[u][c] = in && c_in[c] && a.reads_v ? load(v + row * a.vs_p + c * a.vs_c) - v_mean[c] : 0.0f;
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t row = first + u * kWarps;
        if (row >= row_end) {
          break;
        }
#pragma unroll
        for (int c = 0; c < CT; ++c) {
          if (!c_in[c]) {
            continue;
          }
          T t = from_float<T>(alpha[c] * de[u] + beta[c] * dv[u][c]);
          if (cascade && !finite(as_float(t))) {
            t = from_float<T>(0.0f);
          }
          out[row * a.os_p + c * a.os_c] = t;
        }
      }
    }
  }
}

template <typename T, int CT>
perfkern_status_t launch_ct(const GradArgs& a, cudaStream_t stream) {
  const int64_t n_tiles = (a.n + 31) / 32;
  int64_t row_blocks = (a.p + kRowsPerCta - 1) / kRowsPerCta;
  row_blocks = row_blocks < 65535 ? row_blocks : 65535;
  const dim3 grid(static_cast<unsigned int>(a.c_tiles * n_tiles), static_cast<unsigned int>(row_blocks),
                  static_cast<unsigned int>(a.layers));
  return detail::launch("dendrite grad kernel", grad_kernel<T, CT>, grid, kThreads, 0, stream, a);
}

template <typename T>
perfkern_status_t launch(const GradArgs& a, int ct, cudaStream_t stream) {
  switch (ct) {
    case 1:
      return launch_ct<T, 1>(a, stream);
    case 2:
      return launch_ct<T, 2>(a, stream);
    default:
      return launch_ct<T, 4>(a, stream);
  }
}

#endif  // PERFKERN_DEVICE_CODE

}  // namespace
}  // namespace dendrite
}  // namespace perfkern

extern "C" perfkern_status_t perfkern_dendrite_grad(const perfkern_dendrite_grad_params_t* params,
                                                    cudaStream_t stream) {
  using namespace perfkern::detail;
  namespace dd = perfkern::dendrite;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_dendrite_grad_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.layers, "layers"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.p, "p"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.c, "c"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.n, "n"));
  if (p.layers > 65535) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "layers: expected at most 65535, got " + std::to_string(p.layers));
  }
  if (p.mode != PERFKERN_DENDRITE_COVARIANCE && p.mode != PERFKERN_DENDRITE_PEARSON) {
    return fail(PERFKERN_ERROR_INVALID_VALUE,
                "mode: expected 0 (COVARIANCE) or 1 (PEARSON), got " + std::to_string(static_cast<int>(p.mode)));
  }
  if (p.source != PERFKERN_DENDRITE_GRAD_COEFFICIENTS && p.source != PERFKERN_DENDRITE_GRAD_UPSTREAM &&
      p.source != PERFKERN_DENDRITE_GRAD_CASCADE) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "source: expected 0 (COEFFICIENTS), 1 (UPSTREAM) or 2 (CASCADE), got " +
                                                  std::to_string(static_cast<int>(p.source)));
  }
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  if (p.layers == 0 || p.p == 0 || p.c == 0 || p.n == 0) {
    return PERFKERN_SUCCESS;
  }
  const bool coefficients = p.source == PERFKERN_DENDRITE_GRAD_COEFFICIENTS;
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.values, "values"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.errors, "errors"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.out, "out"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.batch.e_mean, "batch.e_mean"));
  const bool reads_v = coefficients ? p.beta != nullptr : p.mode == PERFKERN_DENDRITE_PEARSON;
  if (reads_v) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.batch.v_mean, "batch.v_mean"));
  }
  if (coefficients) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.alpha, "alpha"));
  } else {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.upstream, "upstream"));
    if (!(p.batch.count > 0.0)) {
      return fail(PERFKERN_ERROR_INVALID_VALUE,
                  "batch.count: expected the tokens of the score's statistics (> 0), got " +
                      std::to_string(p.batch.count));
    }
    if (p.mode == PERFKERN_DENDRITE_PEARSON) {
      PERFKERN_RETURN_IF_ERROR(check_non_null(p.batch.cov, "batch.cov"));
      PERFKERN_RETURN_IF_ERROR(check_non_null(p.batch.v_var, "batch.v_var"));
      PERFKERN_RETURN_IF_ERROR(check_non_null(p.batch.e_var, "batch.e_var"));
    }
  }
  DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  dd::GradArgs a{};
  a.values = p.values;
  a.errors = p.errors;
  a.batch = p.batch;
  a.alpha = p.alpha;
  a.beta = p.beta;
  a.upstream = p.upstream;
  a.out = p.out;
  a.layers = p.layers;
  a.p = p.p;
  a.c = p.c;
  a.n = p.n;
  a.vs_l = p.values_stride_l;
  a.vs_p = p.values_stride_p;
  a.vs_c = p.values_stride_c;
  a.es_l = p.errors_stride_l;
  a.es_p = p.errors_stride_p;
  a.os_l = p.out_stride_l;
  a.os_p = p.out_stride_p;
  a.os_c = p.out_stride_c;
  const int ct = dd::candidates_per_thread(p.c);
  a.c_tiles = (p.c + ct - 1) / ct;
  a.source = p.source;
  a.mode = p.mode;
  a.reads_v = reads_v;
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return dd::launch<float>(a, ct, stream);
    case PERFKERN_DTYPE_F16:
      return dd::launch<__half>(a, ct, stream);
    case PERFKERN_DTYPE_BF16:
      return dd::launch<__nv_bfloat16>(a, ct, stream);
  }
  return fail(PERFKERN_ERROR_INVALID_VALUE, "dtype: unsupported");
}
