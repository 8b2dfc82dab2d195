// The PERA launchers: parameter checks, the backward's workspace layout and the split of its reductions over m
// (a function of the shape only, so results are identical on every GPU), and the dtype dispatch (pera.cuh).
#include <cstdint>
#include <string>

#include "common/cuda_internal.h"
#include "perfkern/perfkern.h"
#include "pera/pera.cuh"

namespace {

namespace pera = perfkern::pera;
namespace tile = perfkern::tile;
using perfkern::detail::check_device_ordinal;
using perfkern::detail::check_dtype;
using perfkern::detail::check_non_negative;
using perfkern::detail::check_non_null;
using perfkern::detail::check_params_ptr;
using perfkern::detail::check_row_stride;
using perfkern::detail::fail;

// Split the m reduction of the dB / dA kernels until the CTAs reach two waves of a 132-SM GPU, each split at
// least kMinSplitRows rows; rows per split a multiple of the reduction block.
constexpr int64_t kTargetCtas = 264;
constexpr int64_t kMinSplitRows = 256;
constexpr int64_t kMaxSplits = 64;

struct Split {
  int64_t splits;
  int64_t rows;
};

Split split_rows(int64_t m, int64_t tiles) {
  int64_t s = tiles > 0 ? (kTargetCtas + tiles - 1) / tiles : 1;
  s = s < m / kMinSplitRows ? s : m / kMinSplitRows;
  s = s < kMaxSplits ? s : kMaxSplits;
  s = s > 1 ? s : 1;
  int64_t rows = (m + s - 1) / s;
  rows = (rows + pera::kBlockK - 1) / pera::kBlockK * pera::kBlockK;
  rows = rows > pera::kBlockK ? rows : pera::kBlockK;
  return Split{m > 0 ? (m + rows - 1) / rows : 1, rows};
}

int64_t align_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

perfkern_status_t check_mode_rank(int64_t r, perfkern_pera_mode_t mode) {
  if (mode != PERFKERN_PERA_FULL && mode != PERFKERN_PERA_SQUARE && mode != PERFKERN_PERA_CROSS) {
    return fail(PERFKERN_ERROR_INVALID_VALUE,
                "mode: expected 0 (FULL), 1 (SQUARE) or 2 (CROSS), got " + std::to_string(static_cast<int>(mode)));
  }
  if (r < 1 || r > pera::kMaxRank) {
    return fail(r > pera::kMaxRank ? PERFKERN_ERROR_NOT_SUPPORTED : PERFKERN_ERROR_INVALID_VALUE,
                "r: expected 1 <= r <= " + std::to_string(pera::kMaxRank) + ", got " + std::to_string(r));
  }
  return PERFKERN_SUCCESS;
}

// The backward's workspace, in 256-byte aligned sections.
struct Layout {
  int64_t rh;
  int64_t pairs;
  bool recompute_z;
  bool need_dz;
  bool want_h;
  int64_t z_pitch;
  int64_t dz_pitch;
  int64_t z_off;
  int64_t dz_off;
  int64_t part_a_off;
  int64_t part_b_off;
  int64_t part_h_off;
  Split sa;
  Split sb;
  int64_t bytes;
};

Layout layout(const perfkern_pera_backward_params_t& p) {
  Layout l{};
  l.pairs = pera::num_pairs(p.r, p.mode);
  l.rh = p.r + l.pairs;
  l.want_h = p.d_h != nullptr && l.pairs > 0;
  l.need_dz = p.dx != nullptr || p.d_a != nullptr || l.want_h;
  l.recompute_z = p.d_b != nullptr && p.z == nullptr;
  const int64_t esize = p.dtype == PERFKERN_DTYPE_F32 ? 4 : 2;
  int64_t off = 0;
  auto section = [&](int64_t bytes) {
    const int64_t at = off;
    off = align_up(off + bytes, 256);
    return at;
  };
  if (l.recompute_z) {
    l.z_pitch = align_up(l.rh, 4);
    l.z_off = section(p.m * l.z_pitch * 4);
  }
  if (l.need_dz) {
    l.dz_pitch = align_up(l.rh, 8);
    l.dz_off = section(p.m * l.dz_pitch * esize);
  }
  if (p.d_b != nullptr) {
    l.sb = split_rows(p.m, pera::tiles(p.n));
    l.part_b_off = section(l.sb.splits * p.n * p.r * 4);
  }
  if (p.d_a != nullptr || l.want_h) {
    l.sa = split_rows(p.m, pera::tiles(p.k));
  }
  if (p.d_a != nullptr) {
    l.part_a_off = section(l.sa.splits * p.r * p.k * 4);
  }
  if (l.want_h) {
    l.part_h_off = section(pera::tiles(p.k) * l.sa.splits * l.pairs * 4);
  }
  l.bytes = off;
  return l;
}

perfkern_status_t check_backward(const perfkern_pera_backward_params_t* params) {
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_pera_backward_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.m, "m"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.n, "n"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.k, "k"));
  PERFKERN_RETURN_IF_ERROR(check_mode_rank(p.r, p.mode));
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  return check_device_ordinal(p.device);
}

template <typename T>
pera::Args<T> common_args(const void* x, int64_t x_rs, const void* a, int64_t a_rs, const void* b, int64_t b_rs,
                          const void* h, int64_t m, int64_t n, int64_t k, int64_t r, perfkern_pera_mode_t mode,
                          float scale) {
  pera::Args<T> s{};
  s.x = tile::matrix<T>(x, m, k, x_rs);
  s.a = tile::matrix<T>(a, r, k, a_rs);
  s.b = tile::matrix<T>(b, n, r, b_rs);
  s.h = h;
  s.m = m;
  s.n = n;
  s.k = k;
  s.r = static_cast<int>(r);
  s.rh = static_cast<int>(r + pera::num_pairs(r, mode));
  s.mode = mode;
  s.scale = scale;
  return s;
}

template <typename T>
perfkern_status_t forward(const perfkern_pera_forward_params_t& p, cudaStream_t stream) {
  pera::Args<T> a = common_args<T>(p.x, p.x_row_stride, p.lora_a, p.a_row_stride, p.lora_b, p.b_row_stride, p.h, p.m,
                                    p.n, p.k, p.r, p.mode, p.scale);
  a.z = tile::matrix<float>(p.z, p.m, a.rh, p.z_row_stride);
  a.z_out = p.z;
  a.out = p.out;
  a.out_row_stride = p.out_row_stride;
  a.accumulate = p.accumulate != 0;
  if constexpr (std::is_same<T, float>::value) {
    return pera::forward_f32(a, stream);
  } else if constexpr (std::is_same<T, __half>::value) {
    return pera::forward_f16(a, stream);
  } else {
    return pera::forward_bf16(a, stream);
  }
}

template <typename T>
perfkern_status_t delta(const perfkern_pera_delta_weight_params_t& p, cudaStream_t stream) {
  pera::Args<T> a = common_args<T>(nullptr, 0, p.lora_a, p.a_row_stride, p.lora_b, p.b_row_stride, p.h, 0, p.n, p.k,
                                    p.r, p.mode, p.scale);
  a.out = p.out;
  a.out_row_stride = p.out_row_stride;
  if constexpr (std::is_same<T, float>::value) {
    return pera::delta_weight_f32(a, stream);
  } else if constexpr (std::is_same<T, __half>::value) {
    return pera::delta_weight_f16(a, stream);
  } else {
    return pera::delta_weight_bf16(a, stream);
  }
}

template <typename T>
perfkern_status_t backward(const perfkern_pera_backward_params_t& p, const Layout& l, cudaStream_t stream) {
  pera::Args<T> a = common_args<T>(p.x, p.x_row_stride, p.lora_a, p.a_row_stride, p.lora_b, p.b_row_stride, p.h, p.m,
                                    p.n, p.k, p.r, p.mode, p.scale);
  char* ws = static_cast<char*>(p.workspace);
  a.g = tile::matrix<T>(p.grad, p.m, p.n, p.grad_row_stride);
  float* z = l.recompute_z ? reinterpret_cast<float*>(ws + l.z_off) : const_cast<float*>(p.z);
  a.z = tile::matrix<float>(z, p.m, a.rh, l.recompute_z ? l.z_pitch : p.z_row_stride);
  a.z_out = z;
  if (l.need_dz) {
    a.dz = tile::matrix<T>(ws + l.dz_off, p.m, a.rh, l.dz_pitch);
    a.dz_out = ws + l.dz_off;
  }
  a.dx = p.dx;
  a.dx_row_stride = p.dx_row_stride;
  a.accumulate = p.accumulate != 0;
  a.part_b = p.d_b != nullptr ? reinterpret_cast<float*>(ws + l.part_b_off) : nullptr;
  a.part_a = p.d_a != nullptr ? reinterpret_cast<float*>(ws + l.part_a_off) : nullptr;
  a.part_h = l.want_h ? reinterpret_cast<float*>(ws + l.part_h_off) : nullptr;
  a.want_h = l.want_h;
  a.splits_a = l.sa.splits;
  a.rows_a = l.sa.rows;
  a.splits_b = l.sb.splits;
  a.rows_b = l.sb.rows;
  pera::BackwardWork w{};
  w.recompute_z = l.recompute_z;
  w.dz = l.need_dz;
  w.dx = p.dx != nullptr;
  w.db = p.d_b != nullptr;
  w.da = p.d_a != nullptr || l.want_h;
  w.d_a = p.d_a;
  w.d_b = p.d_b;
  w.d_h = p.d_h;
  w.d_a_row_stride = p.d_a_row_stride;
  w.d_b_row_stride = p.d_b_row_stride;
  w.device = p.device;
  if constexpr (std::is_same<T, float>::value) {
    return pera::backward_f32(a, w, stream);
  } else if constexpr (std::is_same<T, __half>::value) {
    return pera::backward_f16(a, w, stream);
  } else {
    return pera::backward_bf16(a, w, stream);
  }
}

}  // namespace

extern "C" int64_t perfkern_pera_expanded_rank(int64_t r, perfkern_pera_mode_t mode) {
  if (r < 0 || (mode != PERFKERN_PERA_FULL && mode != PERFKERN_PERA_SQUARE && mode != PERFKERN_PERA_CROSS)) {
    return 0;
  }
  return r + pera::num_pairs(r, mode);
}

extern "C" perfkern_status_t perfkern_pera_forward(const perfkern_pera_forward_params_t* params, cudaStream_t stream) {
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_pera_forward_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.m, "m"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.n, "n"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.k, "k"));
  PERFKERN_RETURN_IF_ERROR(check_mode_rank(p.r, p.mode));
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  const int64_t rh = perfkern_pera_expanded_rank(p.r, p.mode);
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.x_row_stride, p.k, "k", p.m, "x_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.a_row_stride, p.k, "k", p.r, "a_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.b_row_stride, p.r, "r", p.n, "b_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.out_row_stride, p.n, "n", p.m, "out_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.z_row_stride, rh, "r + |P|", p.m, "z_row_stride"));
  if (p.m == 0) {
    return PERFKERN_SUCCESS;
  }
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.z, "z"));
  if (p.k > 0) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.x, "x"));
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.lora_a, "lora_a"));
  }
  if (rh > p.r) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.h, "h"));
  }
  if (p.n > 0) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.out, "out"));
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.lora_b, "lora_b"));
  }
  perfkern::detail::DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return forward<float>(p, stream);
    case PERFKERN_DTYPE_F16:
      return forward<__half>(p, stream);
    case PERFKERN_DTYPE_BF16:
      return forward<__nv_bfloat16>(p, stream);
  }
  return fail(PERFKERN_ERROR_INVALID_VALUE, "dtype: unsupported");
}

extern "C" perfkern_status_t perfkern_pera_delta_weight(const perfkern_pera_delta_weight_params_t* params,
                                                        cudaStream_t stream) {
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_pera_delta_weight_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.n, "n"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.k, "k"));
  PERFKERN_RETURN_IF_ERROR(check_mode_rank(p.r, p.mode));
  PERFKERN_RETURN_IF_ERROR(check_dtype(p.dtype));
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.a_row_stride, p.k, "k", p.r, "a_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.b_row_stride, p.r, "r", p.n, "b_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.out_row_stride, p.k, "k", p.n, "out_row_stride"));
  if (p.n == 0 || p.k == 0) {
    return PERFKERN_SUCCESS;
  }
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.lora_a, "lora_a"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.lora_b, "lora_b"));
  PERFKERN_RETURN_IF_ERROR(check_non_null(p.out, "out"));
  if (pera::num_pairs(p.r, p.mode) > 0) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.h, "h"));
  }
  perfkern::detail::DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return delta<float>(p, stream);
    case PERFKERN_DTYPE_F16:
      return delta<__half>(p, stream);
    case PERFKERN_DTYPE_BF16:
      return delta<__nv_bfloat16>(p, stream);
  }
  return fail(PERFKERN_ERROR_INVALID_VALUE, "dtype: unsupported");
}

extern "C" perfkern_status_t perfkern_pera_backward_workspace_size(const perfkern_pera_backward_params_t* params,
                                                                   int64_t* bytes) {
  PERFKERN_RETURN_IF_ERROR(check_non_null(bytes, "bytes"));
  *bytes = 0;
  PERFKERN_RETURN_IF_ERROR(check_backward(params));
  *bytes = layout(*params).bytes;
  return PERFKERN_SUCCESS;
}

extern "C" perfkern_status_t perfkern_pera_backward(const perfkern_pera_backward_params_t* params,
                                                    cudaStream_t stream) {
  PERFKERN_RETURN_IF_ERROR(check_backward(params));
  const perfkern_pera_backward_params_t& p = *params;
  const Layout l = layout(p);
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.grad_row_stride, p.n, "n", p.m, "grad_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.x_row_stride, p.k, "k", p.m, "x_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.a_row_stride, p.k, "k", p.r, "a_row_stride"));
  PERFKERN_RETURN_IF_ERROR(check_row_stride(p.b_row_stride, p.r, "r", p.n, "b_row_stride"));
  if (p.z != nullptr) {
    PERFKERN_RETURN_IF_ERROR(check_row_stride(p.z_row_stride, l.rh, "r + |P|", p.m, "z_row_stride"));
  }
  if (p.dx != nullptr) {
    PERFKERN_RETURN_IF_ERROR(check_row_stride(p.dx_row_stride, p.k, "k", p.m, "dx_row_stride"));
  }
  if (p.d_a != nullptr) {
    PERFKERN_RETURN_IF_ERROR(check_row_stride(p.d_a_row_stride, p.k, "k", p.r, "d_a_row_stride"));
  }
  if (p.d_b != nullptr) {
    PERFKERN_RETURN_IF_ERROR(check_row_stride(p.d_b_row_stride, p.r, "r", p.n, "d_b_row_stride"));
  }
  if (l.bytes > 0 && (p.workspace == nullptr || p.workspace_bytes < l.bytes ||
                      reinterpret_cast<uintptr_t>(p.workspace) % 16 != 0)) {
    return fail(PERFKERN_ERROR_INVALID_VALUE,
                "workspace: expected a 16-byte aligned buffer of at least " + std::to_string(l.bytes) +
                    " bytes (perfkern_pera_backward_workspace_size), got " + std::to_string(p.workspace_bytes) +
                    (p.workspace == nullptr ? " bytes at NULL" : " bytes"));
  }
  if (p.k > 0) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.lora_a, "lora_a"));
  }
  if (p.m > 0 && p.n > 0) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.grad, "grad"));
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.lora_b, "lora_b"));
  }
  if (p.m > 0 && p.k > 0) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.x, "x"));
  }
  if (l.pairs > 0) {
    PERFKERN_RETURN_IF_ERROR(check_non_null(p.h, "h"));
  }
  perfkern::detail::DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return backward<float>(p, l, stream);
    case PERFKERN_DTYPE_F16:
      return backward<__half>(p, l, stream);
    case PERFKERN_DTYPE_BF16:
      return backward<__nv_bfloat16>(p, l, stream);
  }
  return fail(PERFKERN_ERROR_INVALID_VALUE, "dtype: unsupported");
}
