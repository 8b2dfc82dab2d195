// The portable kernels: plain C++, for CPUs without AVX2 (and the reference the SIMD kernels are tested beside).
#include <cstdint>

#include "cpu/cols.h"
#include "cpu/cpu.h"

namespace perfkern {
namespace cpu {
namespace {

struct V1 {
  static constexpr int kWidth = 1;
  using Reg = float;
  static Reg zero() { return 0.0f; }
  static Reg load(const float* p) { return *p; }
  static void broadcast_pair(const float* v, Reg& b0, Reg& b1) {
    b0 = v[0];
    b1 = v[1];
  }
  static void broadcast_pair_bf16(const uint16_t* v, Reg& b0, Reg& b1) {
    b0 = bf16_to_f32(v[0]);
    b1 = bf16_to_f32(v[1]);
  }
  static Reg fma(Reg a, Reg b, Reg c) { return a * b + c; }
  static Reg add(Reg a, Reg b) { return a + b; }
  static void store(float* p, Reg v) { *p = v; }
  static void convert_row(const void* src, int64_t offset, int64_t count, perfkern_dtype_t dtype, float* dst) {
    load_row_f32(src, offset, 1, count, dtype, dst);
  }
};

XLayout rows_layout(const Problem&) { return XLayout::kRowsPlain; }

// out[m, n] = sum over the groups g of row n: v[2g] x[m, 4g + i0] + v[2g + 1] x[m, 4g + i1].
void rows(const Problem& p, int64_t n0, int64_t n1, Scratch scratch) {
  float* vbuf = scratch.data;
  float* acc = scratch.data + p.k + 16;
  for (int64_t n = n0; n < n1; ++n) {
    const void* row = cols_impl::row_values<V1, cols_impl::ValueKind::kF32>(p, n, 0, p.k, vbuf);
    const auto* v = static_cast<const float*>(row);
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.x_stride;
      float sum = 0.0f;
      if (p.sparse) {
        const int16_t* meta = p.meta + n * p.meta_stride;
        for (int64_t g = 0; g < p.k / 4; ++g) {
          const uint32_t nib = (static_cast<uint16_t>(meta[g / 4]) >> (4 * (g % 4))) & 15u;
          sum += v[2 * g] * x[4 * g + (nib & 3u)] + v[2 * g + 1] * x[4 * g + (nib >> 2)];
        }
      } else {
        for (int64_t k = 0; k < p.k; ++k) sum += v[k] * x[k];
      }
      acc[m] = sum;
    }
    finish_column(p, n, 0, p.m, acc, 1);
  }
}

}  // namespace

const Kernels& scalar_kernels() {
  static const Kernels k{rows_layout, V1::kWidth, rows, cols_impl::cols<V1>};
  return k;
}

}  // namespace cpu
}  // namespace perfkern
