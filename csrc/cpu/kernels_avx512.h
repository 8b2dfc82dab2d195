// AVX-512 (F, BW, VL) kernels, shared by kernels_avx512.cpp and kernels_avx512_bf16.cpp, each compiling them for
// its own flags. The rows kernel for a 2:4 weight takes 32 columns (two metadata words: 16 kept values, one zmm)
// per step and gathers x with one two-table permute (vpermt2ps over the step's 32 x columns): lane j's index is
// 4 (j / 2) plus the 2 bits of the metadata at bit 2 j of the two words, one variable shift and one ternary logic.
#ifndef PERFKERN_CPU_KERNELS_AVX512_H_
#define PERFKERN_CPU_KERNELS_AVX512_H_

#include "cpu/simd.h"

#include <cstdint>
#include <cstring>

#include "cpu/cols.h"
#include "cpu/cpu.h"

namespace perfkern {
namespace cpu {
namespace avx512 {

struct V16 {
  static constexpr int kWidth = 16;
  using Reg = __m512;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  // b0, b1 = v[0], v[1] in every lane: two broadcast loads, which an FMA can take as its memory operand.
  static void broadcast_pair(const float* v, Reg& b0, Reg& b1) {
    b0 = _mm512_set1_ps(v[0]);
    b1 = _mm512_set1_ps(v[1]);
  }
  // From two bf16 values: their 4 bytes broadcast as one lane, v[0] shifted up 16 bits, v[1] the upper half.
  static void broadcast_pair_bf16(const uint16_t* v, Reg& b0, Reg& b1) {
    int32_t bits;
    std::memcpy(&bits, v, 4);
    const __m512i pair = _mm512_set1_epi32(bits);
    b0 = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
    b1 = _mm512_castsi512_ps(_mm512_and_si512(pair, _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u))));
  }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  // count is a multiple of 8.
  static void convert_row(const void* src, int64_t offset, int64_t count, perfkern_dtype_t dtype, float* dst) {
    const auto* h = static_cast<const uint16_t*>(src) + offset;
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(dst + i, widen16(h + i, dtype));
    if (i < count) load_row_f32(src, offset + i, 1, count - i, dtype, dst + i);
  }
  // 16 bf16 / fp16 values as fp32.
  static __m512 widen16(const uint16_t* h, perfkern_dtype_t dtype) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h));
    return dtype == PERFKERN_DTYPE_BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))
                                        : _mm512_cvtph_ps(raw);
  }
};

inline float hsum16(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 16 weight values (fp32 or widened) at element i of row.
template <perfkern_dtype_t D>
inline __m512 load16(const void* row, int64_t i) {
  if constexpr (D == PERFKERN_DTYPE_F32) {
    return _mm512_loadu_ps(static_cast<const float*>(row) + i);
  } else {
    return V16::widen16(static_cast<const uint16_t*>(row) + i, D);
  }
}

// Weight row n + r and x row m0 + j: R x MT dot products into acc[r * MT + j]; x plain fp32.
template <perfkern_dtype_t D, int R, int MT>
void rows_tile_f32(const Problem& p, int64_t n, int64_t m0, float* acc) {
  const int64_t esize = D == PERFKERN_DTYPE_F32 ? 4 : 2;
  const char* vrow[R];
  const int16_t* mrow[R];
  for (int r = 0; r < R; ++r) {
    vrow[r] = static_cast<const char*>(p.values) + (n + r) * p.values_stride * esize;
    mrow[r] = p.sparse ? p.meta + (n + r) * p.meta_stride : nullptr;
  }
  __m512 a[R][MT][2];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < MT; ++j) a[r][j][0] = a[r][j][1] = _mm512_setzero_ps();
  }
  if (p.sparse) {
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i three = _mm512_set1_epi32(3);
    const int64_t steps = p.k / 32;
    for (int64_t s = 0; s < steps; ++s) {
      for (int r = 0; r < R; ++r) {
        int32_t words;
        std::memcpy(&words, mrow[r] + 2 * s, 4);
        // (words >> 2j) & 3 | 4 (j / 2): ternary logic 0xea is (A & B) | C.
        const __m512i idx =
            _mm512_ternarylogic_epi32(_mm512_srlv_epi32(_mm512_set1_epi32(words), shifts), three, base, 0xea);
        const __m512 v = load16<D>(vrow[r], 16 * s);
        for (int j = 0; j < MT; ++j) {
          const float* x = p.x + (m0 + j) * p.x_stride + 32 * s;
          const __m512 g = _mm512_permutex2var_ps(_mm512_loadu_ps(x), idx, _mm512_loadu_ps(x + 16));
          a[r][j][s & 1] = _mm512_fmadd_ps(v, g, a[r][j][s & 1]);
        }
      }
    }
  } else {
    for (int64_t k = 0; k < p.k; k += 16) {
      for (int r = 0; r < R; ++r) {
        const __m512 w = load16<D>(vrow[r], k);
        for (int j = 0; j < MT; ++j) {
          const float* x = p.x + (m0 + j) * p.x_stride + k;
          a[r][j][(k >> 4) & 1] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x), a[r][j][(k >> 4) & 1]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < MT; ++j) {
      float sum = hsum16(_mm512_add_ps(a[r][j][0], a[r][j][1]));
      if (p.sparse && p.k % 32 != 0) sum = add_sparse_tail(sum, p, vrow[r], mrow[r], m0 + j, D);
      acc[r * MT + j] = sum;
    }
  }
}

// Rows [n0, n1) in tiles, each tile's dot products finished by the epilogue. Tile(p, n, m0, acc) computes R x MT.
template <int R, int MT, class Tile>
inline void finish_tile(const Problem& p, int64_t n, int64_t m0, float* acc, Tile tile) {
  tile(p, n, m0, acc);
  for (int r = 0; r < R; ++r) finish_column(p, n + r, m0, MT, acc + r * MT, 1);
}

template <perfkern_dtype_t D>
void rows_typed(const Problem& p, int64_t n0, int64_t n1, float* acc) {
  int64_t n = n0;
  if (p.m == 1) {
    for (; n + 4 <= n1; n += 4) finish_tile<4, 1>(p, n, 0, acc, rows_tile_f32<D, 4, 1>);
    for (; n < n1; ++n) finish_tile<1, 1>(p, n, 0, acc, rows_tile_f32<D, 1, 1>);
    return;
  }
  for (; n < n1; ++n) {
    int64_t m = 0;
    for (; m + 4 <= p.m; m += 4) finish_tile<1, 4>(p, n, m, acc, rows_tile_f32<D, 1, 4>);
    for (; m + 2 <= p.m; m += 2) finish_tile<1, 2>(p, n, m, acc, rows_tile_f32<D, 1, 2>);
    for (; m < p.m; ++m) finish_tile<1, 1>(p, n, m, acc, rows_tile_f32<D, 1, 1>);
  }
}

inline void rows(const Problem& p, int64_t n0, int64_t n1, Scratch scratch) {
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return rows_typed<PERFKERN_DTYPE_F32>(p, n0, n1, scratch.data);
    case PERFKERN_DTYPE_BF16:
      return rows_typed<PERFKERN_DTYPE_BF16>(p, n0, n1, scratch.data);
    default:
      return rows_typed<PERFKERN_DTYPE_F16>(p, n0, n1, scratch.data);
  }
}

inline XLayout rows_layout(const Problem&) { return XLayout::kRowsPlain; }

}  // namespace avx512
}  // namespace cpu
}  // namespace perfkern

#endif  // PERFKERN_CPU_KERNELS_AVX512_H_
