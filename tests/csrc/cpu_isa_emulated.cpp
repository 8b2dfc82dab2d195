// The CPU kernels of every ISA on a CPU that may lack them: this program and the core's CPU sources are compiled
// with PERFKERN_CPU_SIMDE, so each x86 intrinsic the kernels use is SIMDe's portable implementation of it (and the
// launcher reports every ISA as present). Each forced ISA runs random problems across both kernel shapes, K tails,
// dtypes, biases, low ranks and strides, and is compared with the scalar kernels. Prints "ok <cases>" on success.
// Built and run by tests/test_sparse24_cpu_emulated.py; the real instructions run in tests/test_sparse24_cpu.py
// wherever the CPU has them.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cpu/cpu.h"
#include "perfkern/perfkern.h"

namespace {

using perfkern::cpu::load_f32;
using perfkern::cpu::store_f32;

uint64_t g_state = 0x9e3779b97f4a7c15ull;
uint32_t next_u32() {
  g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
  return static_cast<uint32_t>(g_state >> 33);
}
float next_f32() { return static_cast<float>(next_u32() % 2001) / 1000.0f - 1.0f; }

struct Buffer {
  std::vector<uint8_t> bytes;
  perfkern_dtype_t dtype;
  Buffer(int64_t count, perfkern_dtype_t d) : bytes(static_cast<size_t>(count) * (d == PERFKERN_DTYPE_F32 ? 4 : 2)), dtype(d) {}
  void fill(int64_t count) {
    for (int64_t i = 0; i < count; ++i) store_f32(bytes.data(), i, next_f32(), dtype);
  }
  void poison(int64_t count) {
    for (int64_t i = 0; i < count; ++i) store_f32(bytes.data(), i, NAN, dtype);
  }
  void* data() { return bytes.data(); }
};

// One problem on one ISA and on the scalar kernels; true when they agree.
bool check(perfkern_cpu_isa_t isa, perfkern_dtype_t dtype, int64_t m, int64_t n, int64_t k, int64_t r, bool bias,
           bool dense) {
  const int64_t xs = k + 8, vs = (dense ? k : k / 2) + 4, ms = k / 16 + 1, os = n + 3;  // padded row strides
  Buffer x(m * xs, dtype), w(n * vs, dtype), b(n, dtype), t(m * r + 1, dtype), lb(n * r + 1, dtype);
  Buffer out(m * os, dtype), expect(m * os, dtype);
  x.fill(m * xs);
  w.fill(n * vs);
  b.fill(n);
  t.fill(m * r);
  lb.fill(n * r);
  std::vector<int16_t> meta(static_cast<size_t>(n * ms) + 1);
  static const int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t g = 0; g < k / 4; ++g) {
      const int* pair = kPairs[next_u32() % 6];
      const uint32_t nib = static_cast<uint32_t>(pair[0] | (pair[1] << 2));
      auto& word = meta[row * ms + g / 4];
      word = static_cast<int16_t>(static_cast<uint16_t>(word) | (nib << (4 * (g % 4))));
    }
  }
  for (perfkern_cpu_isa_t which : {isa, PERFKERN_CPU_ISA_SCALAR}) {
    Buffer& dst = which == isa ? out : expect;
    dst.poison(m * os);
    perfkern_status_t status;
    if (dense) {
      perfkern_dense_mm_cpu_params_t p{};
      p.x = x.data(); p.w = w.data(); p.bias = bias ? b.data() : nullptr;
      p.lora_t = r ? t.data() : nullptr; p.lora_b = r ? lb.data() : nullptr; p.out = dst.data();
      p.m = m; p.n = n; p.k = k; p.r = r; p.scale = 0.5f; p.x_row_stride = xs; p.w_row_stride = vs;
      p.bias_stride = 1; p.t_stride0 = r; p.t_stride1 = 1; p.b_stride0 = 1; p.b_stride1 = n; p.out_row_stride = os;
      p.dtype = dtype; p.num_threads = 3; p.isa = which;
      status = perfkern_dense_mm_cpu(&p);
    } else {
      perfkern_sparse24_mm_cpu_params_t p{};
      p.x = x.data(); p.values = w.data(); p.meta = meta.data(); p.bias = bias ? b.data() : nullptr;
      p.lora_t = r ? t.data() : nullptr; p.lora_b = r ? lb.data() : nullptr; p.out = dst.data();
      p.m = m; p.n = n; p.k = k; p.r = r; p.scale = 0.5f; p.x_row_stride = xs; p.values_row_stride = vs;
      p.meta_row_stride = ms; p.bias_stride = 1; p.t_stride0 = r; p.t_stride1 = 1; p.b_stride0 = 1;
      p.b_stride1 = n; p.out_row_stride = os; p.dtype = dtype; p.num_threads = 3; p.isa = which;
      status = perfkern_sparse24_mm_cpu(&p);
    }
    if (status != PERFKERN_SUCCESS) {
      std::printf("FAIL %s: %s: %s\n", perfkern_cpu_isa_name(which), perfkern_status_string(status),
                  perfkern_last_error());
      return false;
    }
  }
  // fp32 accumulation in different orders, then one rounding to the dtype: a few units in its last place.
  const double tol = dtype == PERFKERN_DTYPE_F32 ? 1e-5 : (dtype == PERFKERN_DTYPE_BF16 ? 1.6e-2 : 2e-3);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const double got = load_f32(out.data(), i * os + j, dtype), want = load_f32(expect.data(), i * os + j, dtype);
      if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want) + std::sqrt(static_cast<double>(k))))) {
        std::printf("FAIL %s dtype %d %s m=%lld n=%lld k=%lld r=%lld bias=%d at (%lld, %lld): %g vs scalar %g\n",
                    perfkern_cpu_isa_name(isa), static_cast<int>(dtype), dense ? "dense" : "sparse",
                    static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k),
                    static_cast<long long>(r), static_cast<int>(bias), static_cast<long long>(i),
                    static_cast<long long>(j), got, want);
        return false;
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  struct Shape {
    int64_t m, n, k, r;
  };
  // M on both sides of the rows/cols switch and past a 16-lane block; K with a tail after 32- and 64-column steps.
  const Shape shapes[] = {{1, 37, 48, 0}, {1, 9, 144, 1}, {2, 13, 64, 3}, {3, 5, 80, 0},  {5, 7, 112, 0},
                          {6, 11, 96, 1}, {9, 6, 208, 0}, {17, 5, 64, 2}, {33, 3, 48, 0}, {1, 4, 16, 0},
                          {33, 34, 544, 1}};
  int cases = 0;
  for (perfkern_cpu_isa_t isa : {PERFKERN_CPU_ISA_AVX2, PERFKERN_CPU_ISA_AVX512, PERFKERN_CPU_ISA_AVX512_BF16}) {
    for (perfkern_dtype_t dtype : {PERFKERN_DTYPE_F32, PERFKERN_DTYPE_BF16, PERFKERN_DTYPE_F16}) {
      for (const Shape& s : shapes) {
        for (int variant = 0; variant < 4; ++variant) {
          if (!check(isa, dtype, s.m, s.n, s.k, s.r, variant & 1, variant & 2)) return 1;
          ++cases;
        }
      }
    }
  }
  std::printf("ok %d\n", cases);
  return 0;
}
