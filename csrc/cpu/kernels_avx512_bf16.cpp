// AVX-512 kernels with AVX512_BF16: for a bf16 2:4 weight and bf16 x, the rows kernel multiplies bf16 pairs
// directly (vdpbf16ps: lane g += v[2g] x[i0] + v[2g+1] x[i1], fp32 accumulation), 64 columns (four metadata
// words, 16 groups) per step: the 32 kept values are one zmm of bf16 pairs, and one two-table word permute
// (vpermt2w over the step's 64 x columns) puts each group's two x entries beside its two values. Every other
// case runs the AVX-512 kernels. Compiled with the AVX-512 flags plus -mavx512bf16.
#include <cstdint>
#include <cstring>

#include "cpu/kernels_avx512.h"

namespace perfkern {
namespace cpu {
namespace {

template <class To, class From>
inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

XLayout rows_layout(const Problem& p) {
  return p.sparse && p.dtype == PERFKERN_DTYPE_BF16 ? XLayout::kNative : avx512::rows_layout(p);
}

// Word u of the step's index vector: 4 (u / 2) + the 2 bits at 2u of the step's 64 metadata bits.
inline __m512i pair_index(const int16_t* meta) {
  int64_t bits;
  std::memcpy(&bits, meta, 8);
  const __m512i qword_shift = _mm512_setr_epi64(0, 8, 16, 24, 32, 40, 48, 56);
  const __m512i word_shift = _mm512_set_epi16(6, 4, 2, 0, 6, 4, 2, 0, 6, 4, 2, 0, 6, 4, 2, 0, 6, 4, 2, 0, 6, 4, 2, 0,
                                              6, 4, 2, 0, 6, 4, 2, 0);
  const __m512i base = _mm512_set_epi16(60, 60, 56, 56, 52, 52, 48, 48, 44, 44, 40, 40, 36, 36, 32, 32, 28, 28, 24,
                                        24, 20, 20, 16, 16, 12, 12, 8, 8, 4, 4, 0, 0);
  // Qword q holds the bits of words 4q..4q+3 from bit 0 up (bits 8q.. of the step); its low word is copied to
  // its four words, each then shifted by 2 (u % 4).
  __m512i t = _mm512_srlv_epi64(_mm512_set1_epi64(bits), qword_shift);
  t = _mm512_shufflehi_epi16(_mm512_shufflelo_epi16(t, 0), 0);
  t = _mm512_srlv_epi16(t, word_shift);
  return _mm512_ternarylogic_epi32(t, _mm512_set1_epi16(3), base, 0xea);
}

template <int R, int MT>
void bf16_tile(const Problem& p, int64_t n, int64_t m0, float* acc) {
  const uint16_t* vrow[R];
  const int16_t* mrow[R];
  for (int r = 0; r < R; ++r) {
    vrow[r] = static_cast<const uint16_t*>(p.values) + (n + r) * p.values_stride;
    mrow[r] = p.meta + (n + r) * p.meta_stride;
  }
  const auto* x0 = static_cast<const uint16_t*>(p.x_native);
  __m512 a[R][MT][2];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < MT; ++j) a[r][j][0] = a[r][j][1] = _mm512_setzero_ps();
  }
  const int64_t steps = p.k / 64;
  for (int64_t s = 0; s < steps; ++s) {
    for (int r = 0; r < R; ++r) {
      const __m512i idx = pair_index(mrow[r] + 4 * s);
      const __m512i v = _mm512_loadu_si512(vrow[r] + 32 * s);
      for (int j = 0; j < MT; ++j) {
        const uint16_t* x = x0 + (m0 + j) * p.x_native_stride + 64 * s;
        const __m512i g = _mm512_permutex2var_epi16(_mm512_loadu_si512(x), idx, _mm512_loadu_si512(x + 32));
        a[r][j][s & 1] = _mm512_dpbf16_ps(a[r][j][s & 1], bit_cast<__m512bh>(v),
                                          bit_cast<__m512bh>(g));
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < MT; ++j) {
      float sum = avx512::hsum16(_mm512_add_ps(a[r][j][0], a[r][j][1]));
      const uint16_t* x = x0 + (m0 + j) * p.x_native_stride;
      for (int64_t c = steps * 4; c < p.k / 16; ++c) {  // up to 3 trailing words
        const uint32_t w = static_cast<uint16_t>(mrow[r][c]);
        for (int q = 0; q < 4; ++q) {
          const uint32_t nib = (w >> (4 * q)) & 15u;
          const int64_t v = 8 * c + 2 * q, col = 16 * c + 4 * q;
          sum += bf16_to_f32(vrow[r][v]) * bf16_to_f32(x[col + (nib & 3u)]) +
                 bf16_to_f32(vrow[r][v + 1]) * bf16_to_f32(x[col + (nib >> 2)]);
        }
      }
      acc[r * MT + j] = sum;
    }
  }
}

void rows(const Problem& p, int64_t n0, int64_t n1, Scratch scratch) {
  if (rows_layout(p) != XLayout::kNative) return avx512::rows(p, n0, n1, scratch);
  float* acc = scratch.data;
  int64_t n = n0;
  if (p.m == 1) {
    for (; n + 4 <= n1; n += 4) avx512::finish_tile<4, 1>(p, n, 0, acc, bf16_tile<4, 1>);
    for (; n < n1; ++n) avx512::finish_tile<1, 1>(p, n, 0, acc, bf16_tile<1, 1>);
    return;
  }
  for (; n < n1; ++n) {
    int64_t m = 0;
    for (; m + 4 <= p.m; m += 4) avx512::finish_tile<1, 4>(p, n, m, acc, bf16_tile<1, 4>);
    for (; m < p.m; ++m) avx512::finish_tile<1, 1>(p, n, m, acc, bf16_tile<1, 1>);
  }
}

}  // namespace

const Kernels& avx512_bf16_kernels() {
  static const Kernels k{rows_layout, avx512::V16::kWidth, rows, cols_impl::cols<avx512::V16>};
  return k;
}

}  // namespace cpu
}  // namespace perfkern
