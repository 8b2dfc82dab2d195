// The cols kernel (see cpu.h), one template for every ISA: included by kernels_<isa>.cpp after it defines its
// vector type V (kWidth fp32 lanes; zero, load, broadcast, fma, add, store). Each kept weight value is broadcast
// and multiplies W lanes of x^T at the row its metadata names, so the kernel does only the kept multiply-adds,
// and the index decoding is shared by every lane block of M.
#ifndef PERFKERN_CPU_COLS_H_
#define PERFKERN_CPU_COLS_H_

#include <algorithm>
#include <cstdint>

#include "cpu/cpu.h"

namespace perfkern {
namespace cpu {
namespace cols_impl {

// R weight rows x CB lane blocks of M, two accumulators each (first and second kept value of a group, or even
// and odd k for a dense weight), so that about 8 independent FMA chains hide the FMA latency.
template <class V, int R, int CB>
void tile(const Problem& p, const float* const* vrow, const int16_t* const* mrow, int64_t block0, float* acc) {
  constexpr int W = V::kWidth;
  using Reg = typename V::Reg;
  Reg a[R][CB][2];
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < CB; ++b) a[r][b][0] = a[r][b][1] = V::zero();
  }
  const int64_t mp = p.x_stride;  // a power of two (see the launcher)
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(mp));
  const float* xt = p.x + block0 * W;
  if (p.sparse) {
    const int64_t words = p.k / 16;
    for (int64_t c = 0; c < words; ++c) {
      uint32_t w[R];
      for (int r = 0; r < R; ++r) w[r] = static_cast<uint16_t>(mrow[r][c]);
      const float* xc = xt + ((16 * c) << shift);
      for (int q = 0; q < 4; ++q) {
        const float* xq = xc + ((4 * q) << shift);
        for (int r = 0; r < R; ++r) {
          const uint32_t nib = (w[r] >> (4 * q)) & 15u;
          const float* x0 = xq + (static_cast<int64_t>(nib & 3u) << shift);
          const float* x1 = xq + (static_cast<int64_t>(nib >> 2) << shift);
          const Reg b0 = V::broadcast(vrow[r] + 8 * c + 2 * q);
          const Reg b1 = V::broadcast(vrow[r] + 8 * c + 2 * q + 1);
          for (int b = 0; b < CB; ++b) {
            a[r][b][0] = V::fma(b0, V::load(x0 + b * W), a[r][b][0]);
            a[r][b][1] = V::fma(b1, V::load(x1 + b * W), a[r][b][1]);
          }
        }
      }
    }
  } else {
    for (int64_t k = 0; k < p.k; k += 2) {
      const float* x0 = xt + (k << shift);
      const float* x1 = x0 + mp;
      for (int r = 0; r < R; ++r) {
        const Reg b0 = V::broadcast(vrow[r] + k);
        const Reg b1 = V::broadcast(vrow[r] + k + 1);
        for (int b = 0; b < CB; ++b) {
          a[r][b][0] = V::fma(b0, V::load(x0 + b * W), a[r][b][0]);
          a[r][b][1] = V::fma(b1, V::load(x1 + b * W), a[r][b][1]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < CB; ++b) V::store(acc + (r * CB + b) * W, V::add(a[r][b][0], a[r][b][1]));
  }
}

// The weight row n's values as fp32: in place for an fp32 weight, else converted into buf.
template <class V>
const float* values_f32(const Problem& p, int64_t n, float* buf) {
  const int64_t count = p.sparse ? p.k / 2 : p.k;
  if (p.dtype == PERFKERN_DTYPE_F32) return static_cast<const float*>(p.values) + n * p.values_stride;
  V::convert_row(p.values, n * p.values_stride, count, p.dtype, buf);
  return buf;
}

template <class V, int R, int CB>
void run_tile(const Problem& p, int64_t n, int64_t block0, float* const* bufs, float* acc) {
  const float* vrow[R];
  const int16_t* mrow[R];
  for (int r = 0; r < R; ++r) {
    vrow[r] = values_f32<V>(p, n + r, bufs[r]);
    mrow[r] = p.sparse ? p.meta + (n + r) * p.meta_stride : nullptr;
  }
  tile<V, R, CB>(p, vrow, mrow, block0, acc);
  constexpr int W = V::kWidth;
  const int64_t m0 = block0 * W;
  const int64_t count = std::min<int64_t>(CB * W, p.m - m0);
  for (int r = 0; r < R; ++r) finish_column(p, n + r, m0, count, acc + r * CB * W, 1);
}

// Output columns [n0, n1), every row of M. The scratch holds 4 converted weight rows and the accumulators.
template <class V>
void cols(const Problem& p, int64_t n0, int64_t n1, Scratch scratch) {
  constexpr int W = V::kWidth;
  const int64_t blocks = (p.m + W - 1) / W;
  const int64_t row_floats = (p.sparse ? p.k / 2 : p.k) + 16;
  float* bufs[4] = {scratch.data, scratch.data + row_floats, scratch.data + 2 * row_floats,
                    scratch.data + 3 * row_floats};
  float* acc = scratch.data + 4 * row_floats;
  if (blocks == 1) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) run_tile<V, 4, 1>(p, n, 0, bufs, acc);
    for (; n < n1; ++n) run_tile<V, 1, 1>(p, n, 0, bufs, acc);
    return;
  }
  if (blocks == 2) {
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) run_tile<V, 2, 2>(p, n, 0, bufs, acc);
    for (; n < n1; ++n) run_tile<V, 1, 2>(p, n, 0, bufs, acc);
    return;
  }
  // Wider M: one weight row at a time (it stays in L1 across the lane blocks), 4 blocks per pass.
  for (int64_t n = n0; n < n1; ++n) {
    int64_t b = 0;
    for (; b + 4 <= blocks; b += 4) run_tile<V, 1, 4>(p, n, b, bufs, acc);
    for (; b + 2 <= blocks; b += 2) run_tile<V, 1, 2>(p, n, b, bufs, acc);
    for (; b < blocks; ++b) run_tile<V, 1, 1>(p, n, b, bufs, acc);
  }
}

}  // namespace cols_impl
}  // namespace cpu
}  // namespace perfkern

#endif  // PERFKERN_CPU_COLS_H_
