// The cols kernel (see cpu.h), one template for every ISA: included by kernels_<isa>.cpp after it defines its
// vector type V (kWidth fp32 lanes; zero, load, broadcast_pair(_bf16), fma, add, store). Each kept weight value is broadcast
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

template <class V, ValueKind VK, int R, int CB, int kShift>
void tile(const Problem& p, const void* const* vrows, const int16_t* const* mrows, int64_t block0, float* acc) {
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
  const char* xt = reinterpret_cast<const char*>(p.x + block0 * W);
  constexpr int64_t kBlockBytes = W * 4;
  if (p.sparse) {
    const int64_t words = p.k / 16;
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
    for (int64_t k = 0; k < p.k; k += 2, xt += int64_t{2} << sh) {
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
    unroll<CB>([&](auto b) { V::store(acc + (r * CB + b) * W, V::add(a[r][b][0], a[r][b][1])); });
  });
}

// The weight row n's values as fp32: in place for an fp32 weight, else converted into buf.
template <class V>
const float* values_f32(const Problem& p, int64_t n, float* buf) {
  const int64_t count = p.sparse ? p.k / 2 : p.k;
  if (p.dtype == PERFKERN_DTYPE_F32) return static_cast<const float*>(p.values) + n * p.values_stride;
  V::convert_row(p.values, n * p.values_stride, count, p.dtype, buf);
  return buf;
}

// R weight rows from n, lane blocks [block0, block0 + CB) of M: the product and its epilogue.
template <class V, ValueKind VK, int R, int CB, int kShift>
void run_tile(const Problem& p, int64_t n, int64_t block0, float* const* bufs, float* acc) {
  const void* vrow[R];
  const int16_t* mrow[R];
  for (int r = 0; r < R; ++r) {
    vrow[r] = VK == ValueKind::kBf16 ? static_cast<const void*>(static_cast<const uint16_t*>(p.values) +
                                                                (n + r) * p.values_stride)
                                     : values_f32<V>(p, n + r, bufs[r]);
    mrow[r] = p.sparse ? p.meta + (n + r) * p.meta_stride : nullptr;
  }
  tile<V, VK, R, CB, kShift>(p, vrow, mrow, block0, acc);
  constexpr int W = V::kWidth;
  const int64_t m0 = block0 * W;
  const int64_t count = std::min<int64_t>(CB * W, p.m - m0);
  for (int r = 0; r < R; ++r) finish_column(p, n + r, m0, count, acc + r * CB * W, 1);
}

template <class V, ValueKind VK>
void cols_typed(const Problem& p, int64_t n0, int64_t n1, float* const* bufs, float* acc) {
  constexpr int W = V::kWidth;
  // x^T rows of one vector: the byte shift is known here.
  constexpr int kOneBlockShift = __builtin_ctz(static_cast<unsigned>(W * 4));
  const int64_t blocks = (p.m + W - 1) / W;
  if (blocks == 1) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) run_tile<V, VK, 4, 1, kOneBlockShift>(p, n, 0, bufs, acc);
    for (; n < n1; ++n) run_tile<V, VK, 1, 1, kOneBlockShift>(p, n, 0, bufs, acc);
    return;
  }
  if (blocks == 2) {
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) run_tile<V, VK, 2, 2, -1>(p, n, 0, bufs, acc);
    for (; n < n1; ++n) run_tile<V, VK, 1, 2, -1>(p, n, 0, bufs, acc);
    return;
  }
  // Wider M: one weight row at a time (it stays in L1 across the lane blocks), 4 blocks per pass.
  for (int64_t n = n0; n < n1; ++n) {
    int64_t b = 0;
    for (; b + 4 <= blocks; b += 4) run_tile<V, VK, 1, 4, -1>(p, n, b, bufs, acc);
    for (; b + 2 <= blocks; b += 2) run_tile<V, VK, 1, 2, -1>(p, n, b, bufs, acc);
    for (; b < blocks; ++b) run_tile<V, VK, 1, 1, -1>(p, n, b, bufs, acc);
  }
}

// Output columns [n0, n1), every row of M. The scratch holds 4 converted weight rows (fp16) and the accumulators.
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
