// perfkern_dendrite_correlation: the statistics of V and E over the tokens, all layers in one launch.
//
// A CTA owns one layer, 32 neurons (one per lane: a warp reads 32 consecutive elements of a row of V per
// candidate, and one of E for all of them) and CT candidates (all up to 8, so E is read once), and a split of the
// tokens, which its 8 warps cut into 8 contiguous ranges. Each thread streams its rows once: values shifted by
// the layer's first token (for data clustered around an offset, as candidates at sigma(0) = 0.5 are, the
// subtraction is exact and every later sum is of the size of the spread), summed over chunks of kChunk rows,
// each chunk's centred moments (M2 = S_vv - S_v^2 / rows, co = S_ve - S_v S_e / rows) Chan-merged into the
// thread's running moments. The warps' moments are merged in warp order through shared memory. When the layers,
// neurons and candidates alone give too few CTAs, the tokens are split too: each split writes its shifted
// moments to the workspace and a second kernel merges them in split order. The split depends on the shape only,
// so results are the same on every GPU and run to run.
#include <cstdint>
#include <string>

#include "common/cuda_internal.h"
#include "common/kernel.cuh"
#include "dendrite/dendrite.cuh"
#include "perfkern/perfkern.h"

namespace perfkern {
namespace dendrite {
namespace {

constexpr int kChunk = 16;
// CTAs to aim for before the tokens are split (two waves of a 132-SM GPU), and the fewest tokens of a split.
constexpr int64_t kTargetCtas = 264;
constexpr int64_t kMinSplitRows = 256;
constexpr int64_t kMaxSplits = 64;

struct Plan {
  int ct;
  int64_t c_tiles;
  int64_t n_tiles;
  int64_t splits;
  int64_t rows_per_split;
  int64_t workspace_bytes;
};

Plan plan(const perfkern_dendrite_correlation_params_t& p) {
  Plan s{};
  s.ct = candidates_per_thread(p.c);
  s.c_tiles = (p.c + s.ct - 1) / s.ct;
  s.n_tiles = (p.n + 31) / 32;
  const int64_t ctas = p.layers * s.c_tiles * s.n_tiles;
  int64_t splits = ctas > 0 ? (kTargetCtas + ctas - 1) / ctas : 1;
  const int64_t by_rows = p.p / kMinSplitRows;
  splits = splits < by_rows ? splits : by_rows;
  splits = splits < kMaxSplits ? splits : kMaxSplits;
  splits = splits > 1 ? splits : 1;
  s.rows_per_split = (p.p + splits - 1) / splits;
  s.splits = (p.p + s.rows_per_split - 1) / s.rows_per_split;
  s.workspace_bytes = s.splits > 1 ? s.splits * p.layers * (3 * p.c * p.n + 2 * p.n) * 4 : 0;
  return s;
}

struct Args {
  const void* values;
  const void* errors;
  perfkern_dendrite_moments_t stats;
  float* score;
  float* part;  // [splits][layers][3 * c * n + 2 * n]: per split, shifted mean_v, m2_v, co [c][n], mean_e, m2_e [n]
  int64_t layers;
  int64_t p;
  int64_t c;
  int64_t n;
  int64_t vs_l;
  int64_t vs_p;
  int64_t vs_c;
  int64_t es_l;
  int64_t es_p;
  int64_t c_tiles;
  int64_t splits;
  int64_t rows_per_split;
  perfkern_dendrite_mode_t mode;
};

#if PERFKERN_DEVICE_CODE

// The final statistics of one (layer, candidate, neuron) from its shifted moments over all p tokens.
__device__ __forceinline__ void finish_v(const Args& a, int64_t at, float shift_v, float mean_v, float m2_v, float co,
                                         float e_var) {
  const float p = static_cast<float>(a.p);
  const float cov = co / p;
  const float v_var = clamp_var(m2_v) / p;
  a.stats.v_mean[at] = shift_v + mean_v;
  a.stats.cov[at] = cov;
  a.stats.v_var[at] = v_var;
  if (a.score != nullptr) {
    a.score[at] = score(cov, v_var, e_var, a.mode);
  }
}

template <typename T, int CT>
__global__ void __launch_bounds__(kThreads) correlation_kernel(const Args a) {
  // Tokens whose loads a thread issues before their arithmetic: (CT + 1) 16 / CT, 20 to 32 loads in flight.
  constexpr int kUnroll = 16 / CT;
  PERFKERN_DYNAMIC_SMEM(float, shared);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x % a.c_tiles) * CT;
  const int64_t nn = static_cast<int64_t>(blockIdx.x / a.c_tiles) * 32 + lane;
  const int64_t split = blockIdx.y;
  const int64_t layer = blockIdx.z;
  const bool n_in = nn < a.n;
  const T* v = static_cast<const T*>(a.values) + layer * a.vs_l + c0 * a.vs_c + nn;
  const T* e = static_cast<const T*>(a.errors) + layer * a.es_l + nn;
  bool c_in[CT];
  float shift_v[CT];
#pragma unroll
  for (int c = 0; c < CT; ++c) {
    c_in[c] = n_in && c0 + c < a.c;
    shift_v[c] = c_in[c] ? load(v + c * a.vs_c) : 0.0f;
  }
  // Every split shifts by the same token, so their moments merge without a change of origin.
  const float shift_e = n_in ? load(e) : 0.0f;

  const int64_t begin = split * a.rows_per_split;
  const int64_t end = begin + a.rows_per_split < a.p ? begin + a.rows_per_split : a.p;
  const int64_t per_warp = (end - begin + kWarps - 1) / kWarps;
  auto warp_range = [&](int w, int64_t& lo, int64_t& hi) {
    lo = begin + w * per_warp < end ? begin + w * per_warp : end;
    hi = lo + per_warp < end ? lo + per_warp : end;
  };
  int64_t lo, hi;
  warp_range(warp, lo, hi);

  Moments<CT> acc{};
  float count = 0.0f;
  for (int64_t p0 = lo; p0 < hi; p0 += kChunk) {
    const int rows = static_cast<int>(hi - p0 < kChunk ? hi - p0 : kChunk);
    float sv[CT], svv[CT], sve[CT];
#pragma unroll
    for (int c = 0; c < CT; ++c) {
      sv[c] = svv[c] = sve[c] = 0.0f;
    }
    float se = 0.0f, see = 0.0f;
    // kUnroll rows' loads are issued before their arithmetic: (CT + 1) kUnroll loads in flight per thread. Rows
    // past the chunk read as the shift, i.e. add nothing.
    for (int r0 = 0; r0 < rows; r0 += kUnroll) {
      float ev[kUnroll];
      float vv[kUnroll][CT];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t row = p0 + r0 + u;
        const bool in = r0 + u < rows;
        ev[u] = n_in && in ? load(e + row * a.es_p) : shift_e;
#pragma unroll
        for (int c = 0; c < CT; ++c) {
          vv[u][c] = c_in[c] && in ? load(v + row * a.vs_p + c * a.vs_c) : shift_v[c];
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const float de = ev[u] - shift_e;
        se += de;
        see += de * de;
#pragma unroll
        for (int c = 0; c < CT; ++c) {
          const float dv = vv[u][c] - shift_v[c];
          sv[c] += dv;
          svv[c] += dv * dv;
          sve[c] += dv * de;
        }
      }
    }
    const float fr = static_cast<float>(rows);
    Moments<CT> b;
#pragma unroll
    for (int c = 0; c < CT; ++c) {
      b.mean_v[c] = sv[c] / fr;
      b.m2_v[c] = svv[c] - sv[c] * sv[c] / fr;
      b.co[c] = sve[c] - sv[c] * se / fr;
    }
    b.mean_e = se / fr;
    b.m2_e = see - se * se / fr;
    chan_merge(acc, count, b, fr);
    count += fr;
  }

  // Warp w's moments at shared[((w * kFields) + f) * 32 + lane]; warp 0 merges them in warp order.
  constexpr int kFields = 3 * CT + 2;
  if (warp > 0) {
    float* dst = shared + warp * kFields * 32 + lane;
#pragma unroll
    for (int c = 0; c < CT; ++c) {
      dst[(3 * c) * 32] = acc.mean_v[c];
      dst[(3 * c + 1) * 32] = acc.m2_v[c];
      dst[(3 * c + 2) * 32] = acc.co[c];
    }
    dst[(3 * CT) * 32] = acc.mean_e;
    dst[(3 * CT + 1) * 32] = acc.m2_e;
  }
  __syncthreads();
  if (warp != 0) {
    return;
  }
  for (int w = 1; w < kWarps; ++w) {
    int64_t wlo, whi;
    warp_range(w, wlo, whi);
    if (whi <= wlo) {
      continue;
    }
    const float* src = shared + w * kFields * 32 + lane;
    Moments<CT> b;
#pragma unroll
    for (int c = 0; c < CT; ++c) {
      b.mean_v[c] = src[(3 * c) * 32];
      b.m2_v[c] = src[(3 * c + 1) * 32];
      b.co[c] = src[(3 * c + 2) * 32];
    }
    b.mean_e = src[(3 * CT) * 32];
    b.m2_e = src[(3 * CT + 1) * 32];
    const float rows = static_cast<float>(whi - wlo);
    chan_merge(acc, count, b, rows);
    count += rows;
  }
  if (!n_in) {
    return;
  }
  if (a.splits > 1) {
    float* part = a.part + (split * a.layers + layer) * (3 * a.c * a.n + 2 * a.n);
#pragma unroll
    for (int c = 0; c < CT; ++c) {
      if (c_in[c]) {
        const int64_t at = (c0 + c) * a.n + nn;
        part[at] = acc.mean_v[c];
        part[a.c * a.n + at] = acc.m2_v[c];
        part[2 * a.c * a.n + at] = acc.co[c];
      }
    }
    if (c0 == 0) {
      part[3 * a.c * a.n + nn] = acc.mean_e;
      part[3 * a.c * a.n + a.n + nn] = acc.m2_e;
    }
    return;
  }
  const float e_var = clamp_var(acc.m2_e) / static_cast<float>(a.p);
#pragma unroll
  for (int c = 0; c < CT; ++c) {
    if (c_in[c]) {
      finish_v(a, (layer * a.c + c0 + c) * a.n + nn, shift_v[c], acc.mean_v[c], acc.m2_v[c], acc.co[c], e_var);
    }
  }
  if (c0 == 0) {
    a.stats.e_mean[layer * a.n + nn] = shift_e + acc.mean_e;
    a.stats.e_var[layer * a.n + nn] = e_var;
  }
}

// The splits' moments of one (layer, candidate, neuron), merged in split order; candidate 0 also writes E's.
template <typename T>
__global__ void __launch_bounds__(kThreads) merge_kernel(const Args a) {
  const int64_t total = a.layers * a.c * a.n;
  const int64_t per_layer = 3 * a.c * a.n + 2 * a.n;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; item < total;
       item += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t nn = item % a.n;
    const int64_t cc = (item / a.n) % a.c;
    const int64_t layer = item / (a.n * a.c);
    const float shift_v = load(static_cast<const T*>(a.values) + layer * a.vs_l + cc * a.vs_c + nn);
    const float shift_e = load(static_cast<const T*>(a.errors) + layer * a.es_l + nn);
    Moments<1> acc{};
    float count = 0.0f;
    for (int64_t s = 0; s < a.splits; ++s) {
      const float* part = a.part + (s * a.layers + layer) * per_layer;
      const int64_t first = s * a.rows_per_split;
      const float rows = static_cast<float>(a.p - first < a.rows_per_split ? a.p - first : a.rows_per_split);
      Moments<1> b;
      b.mean_v[0] = part[cc * a.n + nn];
      b.m2_v[0] = part[a.c * a.n + cc * a.n + nn];
      b.co[0] = part[2 * a.c * a.n + cc * a.n + nn];
      b.mean_e = part[3 * a.c * a.n + nn];
      b.m2_e = part[3 * a.c * a.n + a.n + nn];
      chan_merge(acc, count, b, rows);
      count += rows;
    }
    const float e_var = clamp_var(acc.m2_e) / static_cast<float>(a.p);
    finish_v(a, item, shift_v, acc.mean_v[0], acc.m2_v[0], acc.co[0], e_var);
    if (cc == 0) {
      a.stats.e_mean[layer * a.n + nn] = shift_e + acc.mean_e;
      a.stats.e_var[layer * a.n + nn] = e_var;
    }
  }
}

template <typename T, int CT>
perfkern_status_t launch_ct(const Args& a, const Plan& s, int device, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(s.c_tiles * s.n_tiles), static_cast<unsigned int>(s.splits),
                  static_cast<unsigned int>(a.layers));
  const size_t smem = static_cast<size_t>(kWarps) * (3 * CT + 2) * 32 * sizeof(float);
  PERFKERN_RETURN_IF_ERROR(
      detail::launch("dendrite correlation kernel", correlation_kernel<T, CT>, grid, kThreads, smem, stream, a));
  if (s.splits == 1) {
    return PERFKERN_SUCCESS;
  }
  unsigned int blocks = 0;
  PERFKERN_RETURN_IF_ERROR(detail::grid_size(device, a.layers * a.c * a.n, kThreads, &blocks));
  return detail::launch("dendrite correlation merge kernel", merge_kernel<T>, blocks, kThreads, 0, stream, a);
}

template <typename T>
perfkern_status_t launch(const Args& a, const Plan& s, int device, cudaStream_t stream) {
  switch (s.ct) {
    case 1:
      return launch_ct<T, 1>(a, s, device, stream);
    case 2:
      return launch_ct<T, 2>(a, s, device, stream);
    default:
      return launch_ct<T, 4>(a, s, device, stream);
  }
}

#endif  // PERFKERN_DEVICE_CODE

perfkern_status_t check(const perfkern_dendrite_correlation_params_t* params) {
  using namespace perfkern::detail;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_dendrite_correlation_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.layers, "layers"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.n, "n"));
  if (p.c < 1) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "c: expected >= 1 candidate, got " + std::to_string(p.c));
  }
  if (p.p < 1) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "p: expected >= 1 token, got " + std::to_string(p.p));
  }
  if (p.layers > 65535) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "layers: expected at most 65535, got " + std::to_string(p.layers));
  }
  if (p.mode != PERFKERN_DENDRITE_COVARIANCE && p.mode != PERFKERN_DENDRITE_PEARSON) {
    return fail(PERFKERN_ERROR_INVALID_VALUE,
                "mode: expected 0 (COVARIANCE) or 1 (PEARSON), got " + std::to_string(static_cast<int>(p.mode)));
  }
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  return check_device_ordinal(p.device);
}

}  // namespace
}  // namespace dendrite
}  // namespace perfkern

extern "C" perfkern_status_t perfkern_dendrite_correlation_workspace_size(
    const perfkern_dendrite_correlation_params_t* params, int64_t* bytes) {
  using namespace perfkern::detail;
  PERFKERN_RETURN_IF_ERROR(check_non_null(bytes, "bytes"));
  *bytes = 0;
  PERFKERN_RETURN_IF_ERROR(perfkern::dendrite::check(params));
  *bytes = perfkern::dendrite::plan(*params).workspace_bytes;
  return PERFKERN_SUCCESS;
}

extern "C" perfkern_status_t perfkern_dendrite_correlation(const perfkern_dendrite_correlation_params_t* params,
                                                           cudaStream_t stream) {
  using namespace perfkern::detail;
  namespace dd = perfkern::dendrite;
  PERFKERN_RETURN_IF_ERROR(dd::check(params));
  const perfkern_dendrite_correlation_params_t& p = *params;
  if (p.layers == 0 || p.n == 0) {
    return PERFKERN_SUCCESS;
  }
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.values, "values"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.errors, "errors"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.stats.e_mean, "stats.e_mean"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.stats.e_var, "stats.e_var"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.stats.v_mean, "stats.v_mean"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.stats.cov, "stats.cov"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.stats.v_var, "stats.v_var"));
  dd::Plan s = dd::plan(p);
  if (s.splits > 1) {
    if (p.workspace == nullptr && p.workspace_bytes == 0) {
      // No workspace: the tokens are not split (the same results, fewer CTAs).
      s.splits = 1;
      s.rows_per_split = p.p;
    } else if (p.workspace == nullptr || p.workspace_bytes < s.workspace_bytes ||
               reinterpret_cast<uintptr_t>(p.workspace) % 16 != 0) {
      return fail(PERFKERN_ERROR_INVALID_VALUE,
                  "workspace: expected a 16-byte aligned buffer of at least " + std::to_string(s.workspace_bytes) +
                      " bytes (perfkern_dendrite_correlation_workspace_size), got " +
                      std::to_string(p.workspace_bytes) + " bytes at " +
                      (p.workspace == nullptr ? std::string("NULL") : std::string("an address")));
    }
  }
  if (static_cast<uint64_t>(s.c_tiles * s.n_tiles) > 0x7fffffffull) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "c, n: too many neuron tiles for one launch");
  }
  DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  dd::Args a{};
  a.values = p.values;
  a.errors = p.errors;
  a.stats = p.stats;
  a.score = p.score;
  a.part = static_cast<float*>(p.workspace);
  a.layers = p.layers;
  a.p = p.p;
  a.c = p.c;
  a.n = p.n;
  a.vs_l = p.values_stride_l;
  a.vs_p = p.values_stride_p;
  a.vs_c = p.values_stride_c;
  a.es_l = p.errors_stride_l;
  a.es_p = p.errors_stride_p;
  a.c_tiles = s.c_tiles;
  a.splits = s.splits;
  a.rows_per_split = s.rows_per_split;
  a.mode = p.mode;
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return dd::launch<float>(a, s, p.device, stream);
    case PERFKERN_DTYPE_F16:
      return dd::launch<__half>(a, s, p.device, stream);
    case PERFKERN_DTYPE_BF16:
      return dd::launch<__nv_bfloat16>(a, s, p.device, stream);
  }
  return fail(PERFKERN_ERROR_INVALID_VALUE, "dtype: unsupported");
}
