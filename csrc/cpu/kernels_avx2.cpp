// AVX2 + FMA (+ F16C) kernels. Compiled with -mavx2 -mfma -mf16c; run only where cpuid says so.
//
// The rows kernel for a 2:4 weight takes 32 columns (two metadata words c, c+1: 16 kept values of a row) per step.
// Each kept value must meet the x column its 2-bit index names. x is stored paired (cpu.h, kRowsPaired): vector q
// holds group q of word c and of word c+1 in its two 128-bit lanes, so the 4 candidates of every value of group q
// lie in one lane and an in-lane vpermilps gathers them, indexed by the metadata shifted per lane (vpermilps reads
// only bits 1:0 of each index). Weight rows go in pairs: the two rows' kept values of group q are interleaved into
// one vector ([r, r, t, t] per lane: load_pair_step) and one permute serves both, 8 values. A row alone (the last
// of an odd N) takes its 16 values as groups 0-1 and 2-3 of both words: two permutes and a blend per 8 values.
#include <cstdint>
#include <cstring>

#include "cpu/cols.h"
#include "cpu/cpu.h"
#include "cpu/simd.h"

namespace perfkern {
namespace cpu {
namespace {

struct V8 {
  static constexpr int kWidth = 8;
  using Reg = __m256;
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  // b0, b1 = v[0], v[1] in every lane: one 8-byte broadcast load, then an in-lane duplicate of each half.
  static void broadcast_pair(const float* v, Reg& b0, Reg& b1) {
    double d;
    std::memcpy(&d, v, 8);
    const __m256 pair = _mm256_castpd_ps(_mm256_set1_pd(d));
    b0 = _mm256_moveldup_ps(pair);
    b1 = _mm256_movehdup_ps(pair);
  }
  // The same from two bf16 values: their 4 bytes broadcast as one lane; v[0] is that lane shifted up 16 bits, v[1]
  // its upper half (bf16 is the upper half of an fp32).
  static void broadcast_pair_bf16(const uint16_t* v, Reg& b0, Reg& b1) {
    const __m256 pair = _mm256_broadcast_ss(reinterpret_cast<const float*>(v));
    b0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(pair), 16));
    b1 = _mm256_and_ps(pair, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(0xffff0000u))));
  }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  // count is a multiple of 8.
  static void convert_row(const void* src, int64_t offset, int64_t count, perfkern_dtype_t dtype, float* dst) {
    const auto* h = static_cast<const uint16_t*>(src) + offset;
    for (int64_t i = 0; i < count; i += 8) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
      const __m256 f = dtype == PERFKERN_DTYPE_BF16
                           ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
                           : _mm256_cvtph_ps(raw);
      _mm256_storeu_ps(dst + i, f);
    }
  }
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 16 kept values of step s as lo = [v0..3 | v8..11] and hi = [v4..7 | v12..15] (v = row + 16 s), in fp32.
template <perfkern_dtype_t D>
inline void load_step(const void* row, int64_t s, __m256& lo, __m256& hi) {
  if constexpr (D == PERFKERN_DTYPE_F32) {
    const float* f = static_cast<const float*>(row) + 16 * s;
    lo = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(f)), _mm_loadu_ps(f + 8), 1);
    hi = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(f + 4)), _mm_loadu_ps(f + 12), 1);
  } else if constexpr (D == PERFKERN_DTYPE_BF16) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + 16 * s));
    lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), raw));
    hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), raw));
  } else {
    const auto* h = static_cast<const uint16_t*>(row) + 16 * s;
    const auto half2 = [](const uint16_t* a, const uint16_t* b) {
      return _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a)),
                                _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
    };
    lo = _mm256_cvtph_ps(half2(h, h + 8));
    hi = _mm256_cvtph_ps(half2(h + 4, h + 12));
  }
}

// One weight row n of a 2:4 weight against x row m: the last row of an odd N, which has no partner for
// sparse_pair_rows_tile. Its 16 values of a step as lo = groups 0-1 and hi = groups 2-3 of both words; x gathered
// by two permutes and a blend per vector. Returns the dot product.
template <perfkern_dtype_t D>
float sparse_row_dot(const Problem& p, int64_t n, int64_t m) {
  const __m256i shift = _mm256_setr_epi32(0, 2, 4, 6, 16, 18, 20, 22);
  const int64_t esize = D == PERFKERN_DTYPE_F32 ? 4 : 2;
  const char* vrow = static_cast<const char*>(p.values) + n * p.values_stride * esize;
  const int16_t* mrow = p.meta + n * p.meta_stride;
  __m256 a = _mm256_setzero_ps();
  const int64_t steps = p.k / 32;
  for (int64_t s = 0; s < steps; ++s) {
    int32_t words;
    std::memcpy(&words, mrow + 2 * s, 4);
    // Lane indices for groups 0-1 (lo) and, 8 bits further, groups 2-3 (hi) of both words.
    const __m256i idx_lo = _mm256_srlv_epi32(_mm256_set1_epi32(words), shift);
    const __m256i idx_hi = _mm256_srli_epi32(idx_lo, 8);
    __m256 vlo, vhi;
    load_step<D>(vrow, s, vlo, vhi);
    const float* x = p.x + m * p.x_stride + 32 * s;
    const __m256 glo = _mm256_blend_ps(_mm256_permutevar_ps(_mm256_load_ps(x), idx_lo),
                                       _mm256_permutevar_ps(_mm256_load_ps(x + 8), idx_lo), 0xcc);
    const __m256 ghi = _mm256_blend_ps(_mm256_permutevar_ps(_mm256_load_ps(x + 16), idx_hi),
                                       _mm256_permutevar_ps(_mm256_load_ps(x + 24), idx_hi), 0xcc);
    a = _mm256_fmadd_ps(vhi, ghi, _mm256_fmadd_ps(vlo, glo, a));
  }
  const float sum = hsum(a);
  return p.k % 32 != 0 ? add_sparse_tail(sum, p, vrow, mrow, m, D) : sum;
}

// The values of step s of two rows r, t, four vectors: v[q] = group q of both rows and both words, lanes
// [r h0, r h1, t h0, t h1 | the same for word c + 1] (h: first or second kept value of the group).
template <perfkern_dtype_t D>
inline void load_pair_step(const void* row_r, const void* row_t, int64_t s, __m256* v) {
  if constexpr (D == PERFKERN_DTYPE_BF16) {
    // 32-bit units are groups (a bf16 pair): interleave the rows' groups, then widen each half of a 128-bit lane.
    const auto* hr = static_cast<const uint16_t*>(row_r) + 16 * s;
    const auto* ht = static_cast<const uint16_t*>(row_t) + 16 * s;
    const __m256i raw_r = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hr));
    const __m256i raw_t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ht));
    const __m256i g01 = _mm256_unpacklo_epi32(raw_r, raw_t);  // [r g0, t g0, r g1, t g1 | word c + 1]
    const __m256i g23 = _mm256_unpackhi_epi32(raw_r, raw_t);
    const __m256i zero = _mm256_setzero_si256();
    v[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, g01));
    v[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, g01));
    v[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, g23));
    v[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, g23));
  } else {
    // load_step's lo = [g0 g1 | g0' g1'] and hi = [g2 g3 | g2' g3'] in 64-bit units (a group's pair): interleave.
    __m256 lo_r, hi_r, lo_t, hi_t;
    load_step<D>(row_r, s, lo_r, hi_r);
    load_step<D>(row_t, s, lo_t, hi_t);
    const auto lo = [](__m256 a, __m256 b) {
      return _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(a), _mm256_castps_pd(b)));
    };
    const auto hi = [](__m256 a, __m256 b) {
      return _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(a), _mm256_castps_pd(b)));
    };
    v[0] = lo(lo_r, lo_t);
    v[1] = hi(lo_r, lo_t);
    v[2] = lo(hi_r, hi_t);
    v[3] = hi(hi_r, hi_t);
  }
}

// P pairs of weight rows x MT rows of x of a 2:4 weight: acc[r * MT + j] gets the dot product of weight row n + r
// and x row m0 + j. The two rows of a pair share every vector: x's paired layout holds group q of words c and
// c + 1 in the two 128-bit lanes, and both rows' kept values of that group choose among those 4 columns, so one
// in-lane permute gathers x for 8 values of two rows, where a row alone needs two permutes and a blend.
template <perfkern_dtype_t D, int P, int MT>
void sparse_pair_rows_tile(const Problem& p, int64_t n, int64_t m0, float* acc) {
  // Lane l of a group vector takes bits 2 h of its row's word: h = l % 2, word c + 1 (16 bits up) in lanes 4-7.
  const __m256i shift = _mm256_setr_epi32(0, 2, 0, 2, 16, 18, 16, 18);
  constexpr int kAcc = MT == 1 ? 2 : 1;  // independent FMA chains: two per pair when there is one x row
  const int64_t esize = D == PERFKERN_DTYPE_F32 ? 4 : 2;
  const char* vrow[2 * P];
  const int16_t* mrow[2 * P];
  for (int r = 0; r < 2 * P; ++r) {
    vrow[r] = static_cast<const char*>(p.values) + (n + r) * p.values_stride * esize;
    mrow[r] = p.meta + (n + r) * p.meta_stride;
  }
  __m256 a[P][MT][kAcc];
  unroll<P>([&](auto pp) {
    unroll<MT>([&](auto j) { unroll<kAcc>([&](auto i) { a[pp][j][i] = _mm256_setzero_ps(); }); });
  });
  const int64_t steps = p.k / 32;
  for (int64_t s = 0; s < steps; ++s) {
    unroll<P>([&](auto pp) {
      int32_t words_r, words_t;
      std::memcpy(&words_r, mrow[2 * pp] + 2 * s, 4);
      std::memcpy(&words_t, mrow[2 * pp + 1] + 2 * s, 4);
      const __m256i both = _mm256_blend_epi32(_mm256_set1_epi32(words_r), _mm256_set1_epi32(words_t), 0xcc);
      __m256i idx[4];
      idx[0] = _mm256_srlv_epi32(both, shift);
      unroll<3>([&](auto q) { idx[q + 1] = _mm256_srli_epi32(idx[0], 4 * (q + 1)); });
      __m256 v[4];
      load_pair_step<D>(vrow[2 * pp], vrow[2 * pp + 1], s, v);
      unroll<MT>([&](auto j) {
        const float* x = p.x + (m0 + j) * p.x_stride + 32 * s;
        unroll<4>([&](auto q) {
          const __m256 g = _mm256_permutevar_ps(_mm256_load_ps(x + 8 * q), idx[q]);
          a[pp][j][q % kAcc] = _mm256_fmadd_ps(v[q], g, a[pp][j][q % kAcc]);
        });
      });
    });
  }
  unroll<P>([&](auto pp) {
    unroll<MT>([&](auto j) {
      __m256 sum8 = a[pp][j][0];
      if constexpr (kAcc == 2) sum8 = _mm256_add_ps(sum8, a[pp][j][1]);
      // Lanes [r, r, t, t] of both 128-bit halves.
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(sum8), _mm256_extractf128_ps(sum8, 1));
      const __m128 pairs = _mm_add_ps(h, _mm_movehdup_ps(h));  // lane 0: r, lane 2: t
      float sum[2] = {_mm_cvtss_f32(pairs), _mm_cvtss_f32(_mm_movehl_ps(pairs, pairs))};
      for (int i = 0; i < 2; ++i) {
        const int r = 2 * pp + i;
        if (p.k % 32 != 0) sum[i] = add_sparse_tail(sum[i], p, vrow[r], mrow[r], m0 + j, D);
        acc[r * MT + j] = sum[i];
      }
    });
  });
}

// R weight rows x MT rows of x of a dense weight (x plain), 16 columns per step; acc[r * MT + j] as above.
template <perfkern_dtype_t D, int R, int MT>
void dense_rows_tile(const Problem& p, int64_t n, int64_t m0, float* acc) {
  const int64_t esize = D == PERFKERN_DTYPE_F32 ? 4 : 2;
  const char* wrow[R];
  for (int r = 0; r < R; ++r) wrow[r] = static_cast<const char*>(p.values) + (n + r) * p.values_stride * esize;
  __m256 a[R][MT][2];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < MT; ++j) a[r][j][0] = a[r][j][1] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < p.k; k += 16) {
    for (int r = 0; r < R; ++r) {
      __m256 w0, w1;
      if constexpr (D == PERFKERN_DTYPE_F32) {
        w0 = _mm256_loadu_ps(reinterpret_cast<const float*>(wrow[r]) + k);
        w1 = _mm256_loadu_ps(reinterpret_cast<const float*>(wrow[r]) + k + 8);
      } else if constexpr (D == PERFKERN_DTYPE_BF16) {
        const auto* h = reinterpret_cast<const uint16_t*>(wrow[r]) + k;
        w0 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h))), 16));
        w1 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + 8))), 16));
      } else {
        w0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
            reinterpret_cast<const uint16_t*>(wrow[r]) + k)));
        w1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
            reinterpret_cast<const uint16_t*>(wrow[r]) + k + 8)));
      }
      for (int j = 0; j < MT; ++j) {
        const float* x = p.x + (m0 + j) * p.x_stride + k;
        a[r][j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), a[r][j][0]);
        a[r][j][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), a[r][j][1]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < MT; ++j) acc[r * MT + j] = hsum(_mm256_add_ps(a[r][j][0], a[r][j][1]));
  }
}

template <perfkern_dtype_t D, int R, int MT>
void rows_tile(const Problem& p, int64_t n, int64_t m0, float* acc) {
  dense_rows_tile<D, R, MT>(p, n, m0, acc);
  for (int r = 0; r < R; ++r) finish_column(p, n + r, m0, MT, acc + r * MT, 1);
}

// Pairs of weight rows of a 2:4 weight (P pairs, MT rows of x), then the epilogue.
template <perfkern_dtype_t D, int P, int MT>
void pair_rows_tile(const Problem& p, int64_t n, int64_t m0, float* acc) {
  sparse_pair_rows_tile<D, P, MT>(p, n, m0, acc);
  for (int r = 0; r < 2 * P; ++r) finish_column(p, n + r, m0, MT, acc + r * MT, 1);
}

template <perfkern_dtype_t D>
void sparse_rows_typed(const Problem& p, int64_t n0, int64_t n1, float* acc) {
  int64_t n = n0;
  if (p.m == 1) {
    for (; n + 4 <= n1; n += 4) pair_rows_tile<D, 2, 1>(p, n, 0, acc);
  } else if (p.m == 2) {
    for (; n + 2 <= n1; n += 2) pair_rows_tile<D, 1, 2>(p, n, 0, acc);
  } else {
    // A pair of weight rows at a time (it stays in cache), x rows in runs of 4.
    for (; n + 2 <= n1; n += 2) {
      int64_t m = 0;
      for (; m + 4 <= p.m; m += 4) pair_rows_tile<D, 1, 4>(p, n, m, acc);
      for (; m + 2 <= p.m; m += 2) pair_rows_tile<D, 1, 2>(p, n, m, acc);
      for (; m < p.m; ++m) pair_rows_tile<D, 1, 1>(p, n, m, acc);
    }
  }
  // The last row of an odd N: alone.
  for (; n < n1; ++n) {
    for (int64_t m = 0; m < p.m; ++m) {
      acc[0] = sparse_row_dot<D>(p, n, m);
      finish_column(p, n, m, 1, acc, 1);
    }
  }
}

template <perfkern_dtype_t D>
void rows_typed(const Problem& p, int64_t n0, int64_t n1, float* acc) {
  if (p.sparse) return sparse_rows_typed<D>(p, n0, n1, acc);
  int64_t n = n0;
  if (p.m == 1) {
    for (; n + 4 <= n1; n += 4) rows_tile<D, 4, 1>(p, n, 0, acc);
    for (; n < n1; ++n) rows_tile<D, 1, 1>(p, n, 0, acc);
    return;
  }
  if (p.m == 2) {
    for (; n + 2 <= n1; n += 2) rows_tile<D, 2, 2>(p, n, 0, acc);
    for (; n < n1; ++n) rows_tile<D, 1, 2>(p, n, 0, acc);
    return;
  }
  // One weight row at a time (it stays in cache), x rows in runs of 4.
  for (; n < n1; ++n) {
    int64_t m = 0;
    for (; m + 4 <= p.m; m += 4) rows_tile<D, 1, 4>(p, n, m, acc);
    for (; m + 2 <= p.m; m += 2) rows_tile<D, 1, 2>(p, n, m, acc);
    for (; m < p.m; ++m) rows_tile<D, 1, 1>(p, n, m, acc);
  }
}

void rows(const Problem& p, int64_t n0, int64_t n1, Scratch scratch) {
  switch (p.dtype) {
    case PERFKERN_DTYPE_F32:
      return rows_typed<PERFKERN_DTYPE_F32>(p, n0, n1, scratch.data);
    case PERFKERN_DTYPE_BF16:
      return rows_typed<PERFKERN_DTYPE_BF16>(p, n0, n1, scratch.data);
    default:
      return rows_typed<PERFKERN_DTYPE_F16>(p, n0, n1, scratch.data);
  }
}

XLayout rows_layout(const Problem& p) { return p.sparse ? XLayout::kRowsPaired : XLayout::kRowsPlain; }

}  // namespace

const Kernels& avx2_kernels() {
  static const Kernels k{rows_layout, V8::kWidth, rows, cols_impl::cols<V8>};
  return k;
}

}  // namespace cpu
}  // namespace perfkern
