// Building blocks of the dendrite-correlation kernels (DESIGN §3.5; Cascade-Correlation, Fahlman & Lebiere 1990):
// the merge of two sets' statistics (Chan, Golub & LeVeque, "Algorithms for computing the sample variance",
// The American Statistician 37, 1983), the score, and element access. Everything is per (layer, candidate,
// neuron): no arithmetic mixes neurons, so a NaN error stays in its own neuron.
#ifndef PERFKERN_DENDRITE_DENDRITE_CUH_
#define PERFKERN_DENDRITE_DENDRITE_CUH_

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/kernel.cuh"
#include "perfkern/perfkern.h"

namespace perfkern {
namespace dendrite {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Shifted statistics of some rows: means (relative to the shift), sums of squared deviations M2 = n var and the
// co-moment n cov, for V (one per candidate) and E.
template <int CT>
struct Moments {
  float mean_v[CT];
  float m2_v[CT];
  float co[CT];
  float mean_e;
  float m2_e;
};

// Merges `rows` rows of statistics b into those of `count` rows (the pairwise formulas):
//   mean += delta r / (n + r)    M2 += M2_b + delta^2 n r / (n + r)    co += co_b + delta_v delta_e n r / (n + r)
template <int CT>
__host__ __device__ __forceinline__ void chan_merge(Moments<CT>& a, float count, const Moments<CT>& b, float rows) {
  const float frac = rows / (count + rows);
  const float weight = count * frac;
  const float delta_e = b.mean_e - a.mean_e;
#pragma unroll
  for (int c = 0; c < CT; ++c) {
    const float delta_v = b.mean_v[c] - a.mean_v[c];
    a.mean_v[c] += delta_v * frac;
    a.m2_v[c] += b.m2_v[c] + delta_v * delta_v * weight;
    a.co[c] += b.co[c] + delta_v * delta_e * weight;
  }
  a.mean_e += delta_e * frac;
  a.m2_e += b.m2_e + delta_e * delta_e * weight;
}

// cov (covariance) or cov / sqrt(v_var e_var) (Pearson; 0 where that is 0, a NaN kept).
__host__ __device__ __forceinline__ float score(float cov, float v_var, float e_var, perfkern_dendrite_mode_t mode) {
  if (mode == PERFKERN_DENDRITE_COVARIANCE) {
    return cov;
  }
  const float denom = sqrtf(v_var * e_var);
  return (denom > 0.0f || denom != denom) ? cov / denom : 0.0f;
}

// Whether v is neither infinite nor NaN (inf - inf and NaN - NaN are NaN).
__host__ __device__ __forceinline__ bool finite(float v) { return v - v == 0.0f; }

// A rounding below zero of a sum of squares is clamped; a NaN is kept.
__host__ __device__ __forceinline__ float clamp_var(float m2) { return m2 < 0.0f ? 0.0f : m2; }

#if PERFKERN_DEVICE_CODE

template <typename T>
__device__ __forceinline__ float load(const T* p) {
  if constexpr (std::is_same<T, float>::value) {
    return __ldg(p);
  } else if constexpr (std::is_same<T, __half>::value) {
    return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
  } else {
    return __bfloat162float(__ushort_as_bfloat16(__ldg(reinterpret_cast<const unsigned short*>(p))));
  }
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same<T, float>::value) {
    return v;
  } else if constexpr (std::is_same<T, __half>::value) {
    return __float2half_rn(v);
  } else {
    return __float2bfloat16_rn(v);
  }
}

template <typename T>
__device__ __forceinline__ float as_float(T v) {
  if constexpr (std::is_same<T, float>::value) {
    return v;
  } else if constexpr (std::is_same<T, __half>::value) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

#endif  // PERFKERN_DEVICE_CODE

// Candidates per thread: all of them up to 4, so that E is read once for them (ceil(C / 4) times beyond: at 8
// candidates a thread's accumulators and loads in flight would take more than the 128 registers that leave two
// 256-thread CTAs per SM).
inline int candidates_per_thread(int64_t c) { return c <= 1 ? 1 : c <= 2 ? 2 : 4; }

}  // namespace dendrite
}  // namespace perfkern

#endif  // PERFKERN_DENDRITE_DENDRITE_CUH_
