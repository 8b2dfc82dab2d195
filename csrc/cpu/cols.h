// The cols kernel (see cpu.h), one template for every ISA: included by kernels_<isa>.cpp after it defines its
// vector type V (kWidth fp32 lanes; zero, load, broadcast_pair(_bf16), fma, add, store). Each kept weight value is
// broadcast and multiplies W lanes of x^T at the row its metadata names, so the kernel does only the kept
// multiply-adds, and the index decoding is shared by every lane block of M.
#ifndef PERFKERN_CPU_COLS_H_
#define PERFKERN_CPU_COLS_H_

#include <algorithm>
#include <cstdint>

#include "cpu/cpu.h"

namespace perfkern {
namespace cpu {
namespace cols_impl {

// Each kept value's x^T row is found from its 2-bit index by shifts and masks on the metadata word shifted left by
// sh, the log2 of the bytes between x^T rows, once per word: index i of group q sits at bits 4 q + 2 i + sh, so
// (w >> (4 q + 2 i)) & (3 << sh) is its byte offset in the group, used as the address's index register. With a
// compile-time sh (one lane block: x^T rows are one vector) that is two ALU instructions per kept value.
//
// Accumulators and weight rows live in arrays indexed by unroll's compile-time indices: GCC keeps such arrays in
// registers, where loops over them (even ones it unrolls later) leave them in memory, stored on every step.
//
// R weight rows x CB lane blocks of M, two accumulators each (first and second kept value of a group, or even and
// odd k for a dense weight), so that 8 or more independent FMA chains hide the FMA latency. The weight values are
// read as fp32 (VK = kF32: an fp32 weight in place, or an fp16 one converted per row) or as bf16 in place (kBf16).
enum class ValueKind { kF32, kBf16 };

template <class V, ValueKind VK>
PERFKERN_CPU_INLINE void value_pair(const void* row, int64_t i, typename V::Reg& b0, typename V::Reg& b1) {
  if constexpr (VK == ValueKind::kF32) {
    V::broadcast_pair(static_cast<const float*>(row) + i, b0, b1);
  } else {
    V::broadcast_pair_bf16(static_cast<const uint16_t*>(row) + i, b0, b1);
  }
}

// Columns [k0, k1) of the product (multiples of 16): vrows[r] and mrows[r] point at row r's values and metadata for
// column k0. acc[r * acc_stride + b * W] gets (or, with accumulate, adds) the rows' sums.
template <class V, ValueKind VK, int R, int CB, int kShift>
void tile(const Problem& p, const void* const* vrows, const int16_t* const* mrows, int64_t block0, int64_t k0,
          int64_t k1, float* acc, int64_t acc_stride, bool accumulate) {
  constexpr int W = V::kWidth;
  using Reg = typename V::Reg;
  Reg a[R][CB][2];
  const void* vrow[R];
  const int16_t* mrow[R];
  unroll<R>([&](auto r) {
    vrow[r] = vrows[r];
    mrow[r] = mrows[r];
    unroll<CB>([&](auto b) { a[r][b][0] = a[r][b][1] = V::zero(); });
  });
  const int64_t mp = p.x_stride;  // a power of two (see the launcher)
  const int sh = kShift >= 0 ? kShift : __builtin_ctzll(static_cast<unsigned long long>(mp * 4));
  const char* xt = reinterpret_cast<const char*>(p.x + k0 * mp + block0 * W);
  constexpr int64_t kBlockBytes = W * 4;
  if (p.sparse) {
    const int64_t words = (k1 - k0) / 16;
    const uint64_t lane = uint64_t{3} << sh;
    for (int64_t c = 0; c < words; ++c, xt += int64_t{16} << sh) {
      unroll<R>([&](auto r) {
        const uint64_t w = static_cast<uint64_t>(static_cast<uint16_t>(mrow[r][c])) << sh;
        unroll<4>([&](auto q) {
          const char* xq = xt + (int64_t{4 * q} << sh);
          const char* x0 = xq + ((w >> (4 * q)) & lane);
          const char* x1 = xq + ((w >> (4 * q + 2)) & lane);
          Reg b0, b1;
          value_pair<V, VK>(vrow[r], 8 * c + 2 * q, b0, b1);
          unroll<CB>([&](auto b) {
            a[r][b][0] = V::fma(b0, V::load(reinterpret_cast<const float*>(x0 + b * kBlockBytes)), a[r][b][0]);
            a[r][b][1] = V::fma(b1, V::load(reinterpret_cast<const float*>(x1 + b * kBlockBytes)), a[r][b][1]);
          });
        });
      });
    }
  } else {
    for (int64_t k = 0; k < k1 - k0; k += 2, xt += int64_t{2} << sh) {
      Reg x[CB][2];
      unroll<CB>([&](auto b) {
        x[b][0] = V::load(reinterpret_cast<const float*>(xt + b * kBlockBytes));
        x[b][1] = V::load(reinterpret_cast<const float*>(xt + (int64_t{1} << sh) + b * kBlockBytes));
      });
      unroll<R>([&](auto r) {
        Reg b0, b1;
        value_pair<V, VK>(vrow[r], k, b0, b1);
        unroll<CB>([&](auto b) {
          a[r][b][0] = V::fma(b0, x[b][0], a[r][b][0]);
          a[r][b][1] = V::fma(b1, x[b][1], a[r][b][1]);
        });
      });
    }
  }
  unroll<R>([&](auto r) {
    unroll<CB>([&](auto b) {
      float* dst = acc + r * acc_stride + b * W;
      const Reg sum = V::add(a[r][b][0], a[r][b][1]);
      V::store(dst, accumulate ? V::add(V::load(dst), sum) : sum);
    });
  });
}

// Weight row n from column k0 to k1, as the tile reads it: fp32 and bf16 values in place, fp16 converted into buf.
template <class V, ValueKind VK>
const void* row_values(const Problem& p, int64_t n, int64_t k0, int64_t k1, float* buf) {
  const int64_t first = p.sparse ? k0 / 2 : k0;
  const int64_t offset = n * p.values_stride + first;
  if (VK == ValueKind::kBf16) return static_cast<const uint16_t*>(p.values) + offset;
  if (p.dtype == PERFKERN_DTYPE_F32) return static_cast<const float*>(p.values) + offset;
  V::convert_row(p.values, offset, p.sparse ? (k1 - k0) / 2 : k1 - k0, p.dtype, buf);
  return buf;
}

// R weight rows from n, lane blocks [block0, block0 + CB), columns [k0, k1): the tile's inputs, then the tile.
template <class V, ValueKind VK, int R, int CB, int kShift>
void run_tile(const Problem& p, int64_t n, int64_t block0, int64_t k0, int64_t k1, float* const* bufs, float* acc,
              int64_t acc_stride, bool accumulate) {
  const void* vrow[R];
  const int16_t* mrow[R];
  for (int r = 0; r < R; ++r) {
    vrow[r] = row_values<V, VK>(p, n + r, k0, k1, bufs[r]);
    mrow[r] = p.sparse ? p.meta + (n + r) * p.meta_stride + k0 / 16 : nullptr;
  }
  tile<V, VK, R, CB, kShift>(p, vrow, mrow, block0, k0, k1, acc, acc_stride, accumulate);
}

// M within one vector: tiles of 4 weight rows over all of K, each finished as it ends.
template <class V, ValueKind VK>
void cols_one_block(const Problem& p, int64_t n0, int64_t n1, float* const* bufs, float* acc) {
  constexpr int W = V::kWidth;
  constexpr int kShift = __builtin_ctz(static_cast<unsigned>(W * 4));  // x^T rows are one vector
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    run_tile<V, VK, 4, 1, kShift>(p, n, 0, 0, p.k, bufs, acc, W, false);
    for (int r = 0; r < 4; ++r) finish_column(p, n + r, 0, p.m, acc + r * W, 1);
  }
  for (; n < n1; ++n) {
    run_tile<V, VK, 1, 1, kShift>(p, n, 0, 0, p.k, bufs, acc, W, false);
    finish_column(p, n, 0, p.m, acc, 1);
  }
}

// Wider M: x^T (K x mp floats) outgrows the caches, so K is taken in blocks whose slice of x^T stays in L2
// (kColsBlockBytes) while up to kColsSweepRows weight rows pass over it, their sums kept in acc (rows x mp).
template <class V, ValueKind VK>
void cols_blocked(const Problem& p, int64_t n0, int64_t n1, float* const* bufs, float* acc) {
  constexpr int W = V::kWidth;
  const int64_t mp = p.x_stride;
  const int64_t blocks = (p.m + W - 1) / W;
  const int64_t block_k = std::max<int64_t>(16, kColsBlockBytes / (mp * 4) / 16 * 16);
  for (int64_t s0 = n0; s0 < n1; s0 += kColsSweepRows) {
    const int64_t s1 = std::min(n1, s0 + kColsSweepRows);
    int64_t k0 = 0;
    do {  // once even for K = 0, which writes zero sums
      const int64_t k1 = std::min(p.k, k0 + block_k);
      const bool accumulate = k0 > 0;
      int64_t n = s0;
      if (blocks == 2) {
        for (; n + 2 <= s1; n += 2) {
          run_tile<V, VK, 2, 2, -1>(p, n, 0, k0, k1, bufs, acc + (n - s0) * mp, mp, accumulate);
        }
      }
      for (; n < s1; ++n) {
        float* row_acc = acc + (n - s0) * mp;
        // The row's inputs once for all its lane blocks (an fp16 row converted once).
        const void* vrow = row_values<V, VK>(p, n, k0, k1, bufs[0]);
        const int16_t* mrow = p.sparse ? p.meta + n * p.meta_stride + k0 / 16 : nullptr;
        int64_t b = 0;
        const auto pass = [&](auto cb) {
          tile<V, VK, 1, decltype(cb)::value, -1>(p, &vrow, &mrow, b, k0, k1, row_acc + b * W, mp, accumulate);
          b += cb;
        };
        while (b + 4 <= blocks) pass(std::integral_constant<int, 4>{});
        while (b + 2 <= blocks) pass(std::integral_constant<int, 2>{});
        while (b < blocks) pass(std::integral_constant<int, 1>{});
      }
      k0 = k1;
    } while (k0 < p.k);
    for (int64_t n = s0; n < s1; ++n) finish_column(p, n, 0, p.m, acc + (n - s0) * mp, 1);
  }
}

template <class V, ValueKind VK>
void cols_typed(const Problem& p, int64_t n0, int64_t n1, float* const* bufs, float* acc) {
  if (p.m <= V::kWidth) {
    cols_one_block<V, VK>(p, n0, n1, bufs, acc);
  } else {
    cols_blocked<V, VK>(p, n0, n1, bufs, acc);
  }
}

// Output columns [n0, n1), every row of M. The scratch holds 4 converted weight rows (fp16) and the accumulators
// (cols_scratch_floats).
template <class V>
void cols(const Problem& p, int64_t n0, int64_t n1, Scratch scratch) {
  const int64_t row_floats = (p.sparse ? p.k / 2 : p.k) + 16;
  float* bufs[4] = {scratch.data, scratch.data + row_floats, scratch.data + 2 * row_floats,
                    scratch.data + 3 * row_floats};
  float* acc = scratch.data + 4 * row_floats;
  if (p.dtype == PERFKERN_DTYPE_BF16) {
    cols_typed<V, ValueKind::kBf16>(p, n0, n1, bufs, acc);
  } else {
    cols_typed<V, ValueKind::kF32>(p, n0, n1, bufs, acc);
  }
}

}  // namespace cols_impl
}  // namespace cpu
}  // namespace perfkern

#endif  // PERFKERN_CPU_COLS_H_
