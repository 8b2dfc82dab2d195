// Checks of the emulator itself (csrc/emu), one case per run: `emulator_check <case>` prints "ok" when the case's
// kernels computed what an independent host computation says, or the launch's error when a kernel faulted
// ("FAULT <code>: <message>"); tests/test_emulator.py runs every case and asserts on the output. The kernels use
// CUDA's device language and the PTX wrappers of csrc/common/ptx.cuh, compiled against the emulator.
// Expected values are computed here on the host, never by the emulator.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/ptx.cuh"

namespace emu = perfkern::emu;
namespace ptx = perfkern::ptx;

namespace {

// ---- harness -----------------------------------------------------------------------------------------------

int g_failures = 0;

template <typename... P, typename... A>
bool run(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  if (smem > 48 * 1024) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  }
  emu::launch(name, kernel, grid, block, smem, nullptr, args...);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    std::printf("FAULT %d: %s\n", static_cast<int>(err), cudaGetErrorString(err));
    ++g_failures;
    return false;
  }
  return true;
}

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL %s\n", what);
    ++g_failures;
  }
}

uint16_t f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
uint16_t f2b(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
float b2f(uint16_t b) { return __bfloat162float(__ushort_as_bfloat16(b)); }
uint32_t pack(uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16); }

// Small integers: every product and sum below is exact in fp32.
std::vector<float> small_ints(size_t n, int seed) {
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::uniform_int_distribution<int> d(-3, 3);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(d(rng));
  return v;
}

// ---- barriers, shared memory, grid-stride loops ------------------------------------------------------------

__global__ void block_sum_kernel(const float* in, float* out, int n) {
  PERFKERN_DYNAMIC_SMEM(float, part);
  __shared__ float total;
  float acc = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    acc += in[i];
  }
  part[threadIdx.x] = acc;
  if (threadIdx.x == 0) total = 0.0f;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (static_cast<int>(threadIdx.x) < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) total = part[0];
  __syncthreads();
  if (threadIdx.x == 5) out[blockIdx.x] = total;
}

void case_barrier() {
  const int n = 10000;
  std::vector<float> in = small_ints(n, 1);
  std::vector<float> out(7, -1.0f);
  if (!run("block_sum", block_sum_kernel, 7, 128, 128 * sizeof(float), in.data(), out.data(), n)) return;
  for (int b = 0; b < 7; ++b) {
    float want = 0.0f;
    for (int i = b * 128; i < n; i += 7 * 128) {
      for (int t = 0; t < 128 && i + t < n; ++t) want += in[i + t];
    }
    expect(out[b] == want, "block sums over a grid-stride loop");
  }
}

// Each thread writes its slot, then reads its neighbour's: right only with the barrier in between.
__global__ void neighbour_kernel(int* out, bool barrier) {
  PERFKERN_DYNAMIC_SMEM(int, s);
  s[threadIdx.x] = static_cast<int>(threadIdx.x) * 3 + 1;
  if (barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

void case_missing_barrier() {
  std::vector<int> out(4 * 96);
  int wrong[2] = {0, 0};
  for (int with = 0; with < 2; ++with) {
    std::fill(out.begin(), out.end(), 0);
    if (!run("neighbour", neighbour_kernel, 4, 96, 96 * sizeof(int), out.data(), with == 1)) return;
    for (int i = 0; i < 4 * 96; ++i) {
      wrong[with] += out[i] != ((i % 96 + 1) % 96) * 3 + 1;
    }
  }
  expect(wrong[1] == 0, "with the barrier every thread reads its neighbour's value");
  expect(wrong[0] > 0, "without the barrier some thread reads its neighbour's slot before it is written");
  std::printf("without the barrier %d of %d reads are wrong\n", wrong[0], 4 * 96);
}

__global__ void syncthreads_count_kernel(int* out) {
  const int c = __syncthreads_count(threadIdx.x % 3 == 0);
  const int a = __syncthreads_and(threadIdx.x < 1000);
  const int o = __syncthreads_or(threadIdx.x == 77);
  if (threadIdx.x == 0) {
    out[0] = c;
    out[1] = a;
    out[2] = o;
  }
}

void case_syncthreads_reduce() {
  int out[3] = {-1, -1, -1};
  if (!run("syncthreads_count", syncthreads_count_kernel, 1, 160, 0, out)) return;
  expect(out[0] == 54 && out[1] == 1 && out[2] == 1, "__syncthreads_count/and/or");
}

// Producer warps 0-1 fill shared memory and arrive at named barrier 1; consumer warps 2-3 wait there (128
// threads in all), then read what the producers wrote. Barrier 2 is a plain bar.sync of the consumers alone.
__global__ void named_barrier_kernel(int* out) {
  PERFKERN_DYNAMIC_SMEM(int, s);
  const int t = static_cast<int>(threadIdx.x);
  if (t < 64) {
    s[t] = 1000 + t;
    emu::bar_arrive(1, 128);
    return;
  }
  emu::bar_sync(1, 128);
  s[t] = s[t - 64] + 1;
  emu::bar_sync(2, 64);
  out[t - 64] = s[64 + (t + 1) % 64];
}

void case_named_barriers() {
  std::vector<int> out(64, -1);
  if (!run("named_barriers", named_barrier_kernel, 2, 128, 128 * sizeof(int), out.data())) return;
  for (int i = 0; i < 64; ++i) {
    expect(out[i] == 1000 + (i + 1) % 64 + 1, "bar.arrive / bar.sync with thread counts");
  }
}

// ---- warp collectives --------------------------------------------------------------------------------------

__global__ void warp_kernel(const int* in, int* out) {
  const int t = static_cast<int>(threadIdx.x);
  int v = in[t];
  for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  out[t * 8 + 0] = v;                                               // warp sum in every lane
  out[t * 8 + 1] = __shfl_sync(0xffffffffu, in[t], 7);              // lane 7's value
  out[t * 8 + 2] = __shfl_up_sync(0xffffffffu, in[t], 3, 16);       // from lane - 3 in 16-lane segments
  out[t * 8 + 3] = __shfl_down_sync(0xffffffffu, in[t], 5);         // from lane + 5
  out[t * 8 + 4] = static_cast<int>(__ballot_sync(0xffffffffu, in[t] > 0));
  out[t * 8 + 5] = __any_sync(0xffffffffu, in[t] == 2) + 2 * __all_sync(0xffffffffu, in[t] > -100);
  out[t * 8 + 6] = __reduce_max_sync(0xffffffffu, in[t]);
  // Two halves of the warp shuffle independently, with disjoint masks.
  const unsigned half = (t % 32) < 16 ? 0x0000ffffu : 0xffff0000u;
  out[t * 8 + 7] = __shfl_sync(half, in[t], (t % 32) < 16 ? 0 : 31);
  const float f = __shfl_xor_sync(0xffffffffu, static_cast<float>(in[t]) * 0.5f, 1);
  if (f != static_cast<float>(in[t ^ 1]) * 0.5f) out[t * 8] = -12345;
}

void case_warp() {
  std::vector<int> in(64);
  std::mt19937 rng(3);
  for (int& x : in) x = static_cast<int>(rng() % 9) - 4;
  std::vector<int> out(64 * 8);
  if (!run("warp", warp_kernel, 1, 64, 0, in.data(), out.data())) return;
  for (int t = 0; t < 64; ++t) {
    const int w = t / 32 * 32;
    const int l = t % 32;
    int sum = 0;
    unsigned ballot = 0;
    int mx = -100;
    bool any2 = false;
    for (int i = 0; i < 32; ++i) {
      sum += in[w + i];
      ballot |= (in[w + i] > 0 ? 1u : 0u) << i;
      mx = std::max(mx, in[w + i]);
      any2 = any2 || in[w + i] == 2;
    }
    const int seg = l / 16 * 16;
    expect(out[t * 8 + 0] == sum, "__shfl_xor_sync butterfly sum (int and float)");
    expect(out[t * 8 + 1] == in[w + 7], "__shfl_sync broadcast");
    expect(out[t * 8 + 2] == (l - 3 >= seg ? in[t - 3] : in[t]), "__shfl_up_sync with width 16");
    expect(out[t * 8 + 3] == (l + 5 < 32 ? in[t + 5] : in[t]), "__shfl_down_sync");
    expect(static_cast<unsigned>(out[t * 8 + 4]) == ballot, "__ballot_sync");
    expect(out[t * 8 + 5] == (any2 ? 1 : 0) + 2, "__any_sync / __all_sync");
    expect(out[t * 8 + 6] == mx, "__reduce_max_sync");
    expect(out[t * 8 + 7] == in[w + (l < 16 ? 0 : 31)], "shuffles of disjoint masks in one warp");
  }
}

// ---- atomics -----------------------------------------------------------------------------------------------

__global__ void atomics_kernel(const int* in, float* fsum, int* isum, int* imax, unsigned* cas) {
  __shared__ float shared_sum;
  if (threadIdx.x == 0) shared_sum = 0.0f;
  __syncthreads();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&shared_sum, static_cast<float>(in[i]));
  atomicAdd(isum, in[i]);
  atomicMax(imax, in[i]);
  unsigned old = *cas;
  while (atomicCAS(cas, old, old + 1) != old) old = *cas;
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(fsum, shared_sum);
}

void case_atomics() {
  const int blocks = 24;
  std::vector<int> in(blocks * 64);
  std::mt19937 rng(4);
  for (int& x : in) x = static_cast<int>(rng() % 200) - 100;
  float fsum = 0.0f;
  int isum = 0;
  int imax = -1000;
  unsigned cas = 0;
  if (!run("atomics", atomics_kernel, blocks, 64, 0, in.data(), &fsum, &isum, &imax, &cas)) return;
  int want = 0;
  int mx = -1000;
  for (int x : in) {
    want += x;
    mx = std::max(mx, x);
  }
  expect(fsum == static_cast<float>(want), "atomicAdd on float, shared then global");
  expect(isum == want, "atomicAdd on int in global memory");
  expect(imax == mx, "atomicMax");
  expect(cas == static_cast<unsigned>(blocks * 64), "atomicCAS loop");
}

// ---- fp16 / bf16, __ldg ----------------------------------------------------------------------------------

__global__ void ldg_kernel(const uint4* in, uint4* out, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = __ldg(in + i);
}

void case_fp16() {
  // Round to nearest even, overflow, subnormals, NaN: bit patterns from the IEEE 754 binary16 rules.
  expect(f2h(65504.0f) == 0x7bff, "fp16 max");
  expect(f2h(65519.0f) == 0x7bff, "fp16 just below the overflow midpoint");
  expect(f2h(65520.0f) == 0x7c00, "fp16 overflow midpoint rounds to inf");
  expect(f2h(std::ldexp(1.0f, -24)) == 0x0001, "smallest fp16 subnormal");
  expect(f2h(std::ldexp(1.0f, -25)) == 0x0000, "2^-25 ties to even (zero)");
  expect(f2h(std::ldexp(3.0f, -26)) == 0x0001, "3 * 2^-26 rounds up to the smallest subnormal");
  expect(f2h(1.0f + std::ldexp(1.0f, -11)) == 0x3c00, "1 + half an ulp ties to even");
  expect(f2h(1.0f + std::ldexp(3.0f, -11)) == 0x3c02, "1 + 1.5 ulp ties to even (up)");
  expect(f2h(-0.0f) == 0x8000, "fp16 -0");
  expect((f2h(NAN) & 0x7c00) == 0x7c00 && (f2h(NAN) & 0x3ff) != 0, "fp16 NaN");
  expect(h2f(0x0001) == std::ldexp(1.0f, -24) && h2f(0x3555) == 0.333251953125f, "fp16 to fp32");
  expect(f2b(1.0f + std::ldexp(1.0f, -8)) == 0x3f80, "bf16 tie to even");
  expect(f2b(1.0f + std::ldexp(3.0f, -8)) == 0x3f82, "bf16 tie to even (up)");
  expect((f2b(NAN) & 0x7f80) == 0x7f80 && (f2b(NAN) & 0x7f) != 0, "bf16 NaN");
  expect(b2f(0xc0a0) == -5.0f, "bf16 to fp32");
  expect(__half2float(__hfma(__float2half(3.0f), __float2half(0.5f), __float2half(0.25f))) == 1.75f, "__hfma");
  const __nv_bfloat162 p = __floats2bfloat162_rn(1.5f, -2.0f);
  expect(__low2float(p) == 1.5f && __high2float(p) == -2.0f, "bf16 pairs");
  std::vector<uint4> in(10);
  for (size_t i = 0; i < in.size(); ++i) in[i] = make_uint4(i, 2 * i, 3 * i, 4 * i);
  std::vector<uint4> out(10);
  if (!run("ldg", ldg_kernel, 1, 4, 0, in.data(), out.data(), 10)) return;
  expect(std::memcmp(in.data(), out.data(), sizeof(uint4) * 10) == 0, "__ldg of 16-byte vectors");
}

__global__ void ldg_misaligned_kernel(const unsigned char* bytes, uint4* out) {
  out[0] = __ldg(reinterpret_cast<const uint4*>(bytes + 4));
}

void case_ldg_misaligned() {
  alignas(16) unsigned char bytes[64] = {};
  uint4 out;
  run("ldg_misaligned", ldg_misaligned_kernel, 1, 32, 0, bytes, &out);
}

// ---- cp.async ----------------------------------------------------------------------------------------------

__global__ void cp_async_kernel(const uint4* src, uint4* early, uint4* late, bool wait) {
  PERFKERN_DYNAMIC_SMEM(uint4, s);
  ptx::cp_async_cg_shared_global_16(ptx::smem_addr(s + threadIdx.x), src + threadIdx.x, 16);
  ptx::cp_async_commit_group();
  early[threadIdx.x] = s[threadIdx.x];  // before the wait: the copy has not landed
  if (wait) ptx::cp_async_wait_group<0>();
  late[threadIdx.x] = s[threadIdx.x];
}

void case_cp_async() {
  std::vector<uint4> src(32);
  for (unsigned i = 0; i < 32; ++i) src[i] = make_uint4(i, i + 1, i + 2, i + 3);
  std::vector<uint4> early(32);
  std::vector<uint4> late(32);
  if (!run("cp_async", cp_async_kernel, 1, 32, 32 * 16, src.data(), early.data(), late.data(), true)) return;
  bool poisoned = true;
  for (const uint4& v : early) poisoned = poisoned && v.x == 0xffffffffu && v.w == 0xffffffffu;
  expect(poisoned, "a read before cp.async.wait_group sees poison");
  expect(std::memcmp(late.data(), src.data(), 32 * 16) == 0, "after the wait the data has landed");
  if (!run("cp_async", cp_async_kernel, 1, 32, 32 * 16, src.data(), early.data(), late.data(), false)) return;
  poisoned = true;
  for (const uint4& v : late) poisoned = poisoned && v.x == 0xffffffffu;
  expect(poisoned, "without a wait the data never lands");
}

__global__ void cp_async_race_kernel(const uint4* src) {
  PERFKERN_DYNAMIC_SMEM(uint4, s);
  ptx::cp_async_cg_shared_global_16(ptx::smem_addr(s + threadIdx.x), src + threadIdx.x, 16);
  ptx::cp_async_commit_group();
  __syncthreads();
  if (threadIdx.x == 3) s[5] = make_uint4(1, 2, 3, 4);  // another thread's destination, in flight
  __syncthreads();
  ptx::cp_async_wait_group<0>();
}

void case_cp_async_race() {
  std::vector<uint4> src(32);
  run("cp_async_race", cp_async_race_kernel, 1, 32, 32 * 16, src.data());
}

__global__ void smem_overflow_kernel(int n) {
  PERFKERN_DYNAMIC_SMEM(int, s);
  s[threadIdx.x] = 1;
  if (threadIdx.x == 0) s[n] = 2;  // one past the end
}

void case_smem_overflow() { run("smem_overflow", smem_overflow_kernel, 1, 64, 64 * sizeof(int), 64); }

// ---- deadlocks and mismatched collectives ----------------------------------------------------------------

__global__ void partial_shfl_kernel(int* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}

void case_partial_shfl() {
  int out[64];
  run("partial_shfl", partial_shfl_kernel, 1, 64, 0, out);
}

__global__ void split_barrier_kernel() {
  if (threadIdx.x < 40) {
    __syncthreads();
  } else {
    __syncwarp();
  }
}

void case_split_barrier() { run("split_barrier", split_barrier_kernel, 1, 64, 0); }

__global__ void mismatch_kernel(int* out) {
  if (threadIdx.x % 2 == 0) {
    out[threadIdx.x] = static_cast<int>(__ballot_sync(0xffffffffu, 1));
  } else {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
  }
}

void case_mismatch() {
  int out[32];
  run("mismatch", mismatch_kernel, 1, 32, 0, out);
}

// ---- ldmatrix, mma, mma.sp -----------------------------------------------------------------------------------

// 8x8 b16 matrices in shared memory, row r of matrix j at 16 * (8 j + r), loaded by ldmatrix x4 (plain and
// transposed); every lane writes its four registers out.
__global__ void ldmatrix_kernel(const uint16_t* in, uint32_t* out, bool trans) {
  PERFKERN_DYNAMIC_SMEM(uint16_t, s);
  for (int i = threadIdx.x; i < 256; i += 32) s[i] = in[i];
  __syncwarp();
  uint32_t r[4];
  const uint32_t addr = ptx::smem_addr(s + 8 * threadIdx.x);
  if (trans) {
    emu::ldmatrix(r, 4, true, addr);
  } else {
    ptx::ldmatrix_sync_aligned_m8n8_x4_shared_b16(r, addr);
  }
  for (int j = 0; j < 4; ++j) out[threadIdx.x * 4 + j] = r[j];
}

void case_ldmatrix() {
  std::vector<uint16_t> in(256);
  for (int i = 0; i < 256; ++i) in[i] = static_cast<uint16_t>(i * 7 + 3);
  std::vector<uint32_t> out(128);
  for (int trans = 0; trans < 2; ++trans) {
    if (!run("ldmatrix", ldmatrix_kernel, 1, 32, 512, in.data(), out.data(), trans == 1)) return;
    for (int l = 0; l < 32; ++l) {
      for (int j = 0; j < 4; ++j) {
        const int r = l / 4;
        const int c = 2 * (l % 4);
        const uint16_t lo = trans ? in[64 * j + 8 * c + r] : in[64 * j + 8 * r + c];
        const uint16_t hi = trans ? in[64 * j + 8 * (c + 1) + r] : in[64 * j + 8 * r + c + 1];
        expect(out[l * 4 + j] == pack(lo, hi), trans ? "ldmatrix.x4.trans" : "ldmatrix.x4");
      }
    }
  }
}

// Fragments are built here from the ISA's tables: A row-major 16 x K (K = 16, or 32 logical for mma.sp with
// 16 stored), B K x 8, C/D 16 x 8.
struct MmaProblem {
  std::vector<uint32_t> a;  // [32 lanes][4]
  std::vector<uint32_t> b;  // [32][4]
  std::vector<uint32_t> e;  // [32]
  std::vector<float> c;     // [32][4]
  std::vector<float> want;  // [32][4]
};

__global__ void mma_kernel(const uint32_t* a, const uint32_t* b, const uint32_t* e, float* d, int kind) {
  const int l = static_cast<int>(threadIdx.x);
  uint32_t ar[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
  uint32_t br[4] = {b[4 * l], b[4 * l + 1], b[4 * l + 2], b[4 * l + 3]};
  const uint32_t b2[2] = {br[0], br[1]};
  float acc[4] = {d[4 * l], d[4 * l + 1], d[4 * l + 2], d[4 * l + 3]};
  switch (kind) {
    case 0:
      ptx::mma_m16n8k16_f32_f16(acc, ar, b2);
      break;
    case 1:
      ptx::mma_m16n8k16_f32_bf16(acc, ar, b2);
      break;
    case 2:
      ptx::mma_sp_m16n8k32_f32_f16<0>(acc, ar, br, e[l]);
      break;
    case 3:
      ptx::mma_sp_m16n8k32_f32_bf16<1>(acc, ar, br, e[l]);
      break;
  }
  for (int i = 0; i < 4; ++i) d[4 * l + i] = acc[i];
}

MmaProblem make_mma(bool sparse, bool bf16, int selector, int seed, bool bad_meta) {
  const int k = sparse ? 32 : 16;
  std::vector<float> A = small_ints(16 * k, seed);
  std::vector<float> B = small_ints(k * 8, seed + 1);
  std::vector<float> C = small_ints(16 * 8, seed + 2);
  auto bits = [&](float f) { return bf16 ? f2b(f) : f2h(f); };
  MmaProblem p;
  p.a.assign(128, 0);
  p.b.assign(128, 0);
  p.e.assign(32, 0);
  p.c.assign(128, 0);
  p.want.assign(128, 0);
  // Sparse A: each 4-wide chunk keeps two entries at increasing positions (idx0, idx1); stored[r][2q..2q+1].
  std::vector<float> stored(16 * 16, 0.0f);
  std::vector<int> nib(16 * 8, 0);
  if (sparse) {
    static const int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
    std::mt19937 rng(static_cast<unsigned>(seed) * 7 + 1);
    for (int r = 0; r < 16; ++r) {
      for (int q = 0; q < 8; ++q) {
        const int* pr = kPairs[rng() % 6];
        for (int z = 0; z < 4; ++z) {
          if (z != pr[0] && z != pr[1]) A[r * 32 + 4 * q + z] = 0.0f;
        }
        stored[r * 16 + 2 * q] = A[r * 32 + 4 * q + pr[0]];
        stored[r * 16 + 2 * q + 1] = A[r * 32 + 4 * q + pr[1]];
        nib[r * 8 + q] = pr[0] | (pr[1] << 2);
      }
    }
    if (bad_meta) nib[9 * 8 + 5] = 0x5;  // row 9, chunk 5: indices 1, 1
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4;
    const int t = l % 4;
    uint16_t av[8];
    for (int i = 0; i < 8; ++i) {
      const int row = g + 8 * ((i >> 1) & 1);
      const int col = 2 * t + (i & 1) + 8 * (i >> 2);
      av[i] = bits(sparse ? stored[row * 16 + col] : A[row * 16 + col]);
    }
    for (int j = 0; j < 4; ++j) p.a[4 * l + j] = pack(av[2 * j], av[2 * j + 1]);
    uint16_t bv[8];
    for (int i = 0; i < k / 4; ++i) bv[i] = bits(B[(2 * t + (i & 1) + 8 * (i >> 1)) * 8 + g]);
    for (int j = 0; j < k / 8; ++j) p.b[4 * l + j] = pack(bv[2 * j], bv[2 * j + 1]);
    for (int i = 0; i < 4; ++i) p.c[4 * l + i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    // Metadata: lanes 4g + 2 sel + h hold rows g (bits 0-15) and g + 8 (bits 16-31), K half h, chunk q in
    // bits 4q.
    if (sparse && t / 2 == selector) {
      const int h = t % 2;
      uint32_t e = 0;
      for (int q = 0; q < 4; ++q) {
        e |= static_cast<uint32_t>(nib[g * 8 + 4 * h + q]) << (4 * q);
        e |= static_cast<uint32_t>(nib[(g + 8) * 8 + 4 * h + q]) << (16 + 4 * q);
      }
      p.e[l] = e;
    } else if (sparse) {
      p.e[l] = 0xdeadbeefu;  // the lanes the selector does not name: ignored
    }
  }
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 4; ++i) {
      const int row = l / 4 + 8 * (i >> 1);
      const int col = 2 * (l % 4) + (i & 1);
      float s = C[row * 8 + col];
      for (int kk = 0; kk < k; ++kk) s += A[row * k + kk] * B[kk * 8 + col];
      p.want[4 * l + i] = s;
    }
  }
  return p;
}

void case_mma() {
  for (int kind = 0; kind < 4; ++kind) {
    const bool sparse = kind >= 2;
    MmaProblem p = make_mma(sparse, kind % 2 == 1, kind == 3 ? 1 : 0, 10 + kind, false);
    if (!run("mma", mma_kernel, 1, 32, 0, p.a.data(), p.b.data(), p.e.data(), p.c.data(), kind)) return;
    expect(p.c == p.want, kind == 0   ? "mma.m16n8k16 f16"
                          : kind == 1 ? "mma.m16n8k16 bf16"
                          : kind == 2 ? "mma.sp.m16n8k32 f16, selector 0"
                                      : "mma.sp.m16n8k32 bf16, selector 1");
  }
}

void case_mma_sp_bad_metadata() {
  MmaProblem p = make_mma(true, false, 0, 20, true);
  run("mma_sp_bad_metadata", mma_kernel, 1, 32, 0, p.a.data(), p.b.data(), p.e.data(), p.c.data(), 2);
}

// ---- wgmma -------------------------------------------------------------------------------------------------

// A K-major operand of `rows` rows x `kbytes` bytes in shared memory, laid out for a descriptor of the given
// swizzle (0 = none: 8 x 16-byte core matrices with LBO along K and SBO along rows; else rows of the swizzle
// width, 8-row atoms SBO apart, 16-byte chunks XORed with the row within the atom).
uint32_t layout_offset(int swizzle, int row, uint32_t kbyte, uint32_t lbo, uint32_t sbo) {
  if (swizzle == 0) {
    return static_cast<uint32_t>(row / 8) * sbo + (kbyte / 16) * lbo + static_cast<uint32_t>(row % 8) * 16 +
           kbyte % 16;
  }
  // The canonical swizzled tables: in an atom of 8 rows of `w` bytes, 16-byte chunk c of row r is stored at
  // chunk c ^ (r * w / 128): r for 128-byte rows, r / 2 for 64-byte rows, r / 4 for 32-byte rows.
  const uint32_t w = static_cast<uint32_t>(swizzle);
  const uint32_t r8 = static_cast<uint32_t>(row % 8);
  const uint32_t chunk = (kbyte % w) / 16;
  return static_cast<uint32_t>(row / 8) * sbo + (kbyte / w) * lbo + r8 * w + ((chunk ^ (r8 * w / 128)) << 4) +
         kbyte % 16;
}

uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo, int swizzle) {
  const uint64_t mode = swizzle == 0 ? 0 : swizzle == 128 ? 1 : swizzle == 64 ? 2 : 3;
  return static_cast<uint64_t>((addr & 0x3ffffu) >> 4) | (static_cast<uint64_t>((lbo & 0x3ffffu) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3ffffu) >> 4) << 32) | (mode << 62);
}

struct WgmmaArgs {
  const uint16_t* a_img;  // the shared-memory image of A (bytes a_bytes), copied in by the kernel
  const uint16_t* b_img;
  int a_bytes;
  int b_bytes;
  uint32_t a_lbo, a_sbo, b_lbo, b_sbo;
  int swizzle;
  const uint32_t* e;       // [128] metadata registers (sparse)
  const uint32_t* a_regs;  // [128][4] A fragments (A in registers)
  float* d;                // [128][32] accumulators in / out
  int mode;                // 0 dense SS, 1 dense RS, 2 sparse, 3 two groups chained, 4 operand clobbered,
                           // 5 accumulators clobbered, 6 no fence
};

constexpr int kN = 64;  // wgmma N of these checks

__global__ void wgmma_kernel(WgmmaArgs p) {
  PERFKERN_DYNAMIC_SMEM(unsigned char, raw);
  unsigned char* smem = raw + ((1024 - ptx::smem_addr(raw) % 1024) % 1024);  // 1024-byte aligned
  unsigned char* a_s = smem;
  unsigned char* b_s = smem + 16384;
  for (int i = threadIdx.x; i < p.a_bytes / 2; i += 128) reinterpret_cast<uint16_t*>(a_s)[i] = p.a_img[i];
  for (int i = threadIdx.x; i < p.b_bytes / 2; i += 128) reinterpret_cast<uint16_t*>(b_s)[i] = p.b_img[i];
  __syncthreads();
  const int t = static_cast<int>(threadIdx.x);
  float acc[kN / 2];
  for (int j = 0; j < kN / 2; ++j) acc[j] = p.d[t * 32 + j];
  const uint64_t a_desc = make_desc(ptx::smem_addr(a_s), p.a_lbo, p.a_sbo, p.swizzle);
  const uint64_t b_desc = make_desc(ptx::smem_addr(b_s), p.b_lbo, p.b_sbo, p.swizzle);
  if (p.mode != 6) ptx::wgmma_fence_sync_aligned();
  if (p.mode == 0 || p.mode == 6) {
    emu::wgmma_mma_async(emu::Dtype::kF16, kN, acc, a_desc, b_desc, 1);
  } else if (p.mode == 1) {
    const uint32_t a[4] = {p.a_regs[4 * t], p.a_regs[4 * t + 1], p.a_regs[4 * t + 2], p.a_regs[4 * t + 3]};
    emu::wgmma_mma_async_rs(emu::Dtype::kF16, kN, acc, a, b_desc, 1);
  } else {
    ptx::wgmma_mma_async_sp_m64n64k32_f32_bf16(acc, a_desc, b_desc, p.e[t], 1);
  }
  ptx::wgmma_commit_group_sync_aligned();
  if (p.mode == 3) {
    // A second group on the same accumulators while the first is in flight: the result is A B twice.
    ptx::wgmma_mma_async_sp_m64n64k32_f32_bf16(acc, a_desc, b_desc, p.e[t], 1);
    ptx::wgmma_commit_group_sync_aligned();
    ptx::wgmma_wait_group_sync_aligned<1>();
  }
  if (p.mode == 4 && t == 9) a_s[130] ^= 1;  // row 1, K bytes 16..31: read by the wgmma
  if (p.mode == 5 && t == 70) acc[3] = 0.0f;
  ptx::wgmma_wait_group_sync_aligned<0>();
  for (int j = 0; j < kN / 2; ++j) p.d[t * 32 + j] = acc[j];
}

// The expected D (64 x kN, fp32) and the inputs for one wgmma case.
struct WgmmaProblem {
  std::vector<uint16_t> a_img, b_img;
  std::vector<uint32_t> e, a_regs;
  std::vector<float> d, want;
  WgmmaArgs args;
};

WgmmaProblem make_wgmma(int mode, int swizzle, int seed) {
  const bool sparse = mode >= 2;
  const bool bf16 = sparse;
  const int k = sparse ? 32 : 16;
  const int stored_k = 16;
  auto bits = [&](float f) { return bf16 ? f2b(f) : f2h(f); };
  WgmmaProblem p;
  std::vector<float> A = small_ints(64 * k, seed);
  std::vector<float> B = small_ints(kN * k, seed + 1);  // [n][k]
  std::vector<float> C = small_ints(64 * kN, seed + 2);
  std::vector<float> stored(64 * stored_k, 0.0f);
  std::vector<int> nib(64 * 8, 0);
  if (sparse) {
    static const int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
    std::mt19937 rng(static_cast<unsigned>(seed));
    for (int r = 0; r < 64; ++r) {
      for (int q = 0; q < 8; ++q) {
        const int* pr = kPairs[rng() % 6];
        for (int z = 0; z < 4; ++z) {
          if (z != pr[0] && z != pr[1]) A[r * 32 + 4 * q + z] = 0.0f;
        }
        stored[r * 16 + 2 * q] = A[r * 32 + 4 * q + pr[0]];
        stored[r * 16 + 2 * q + 1] = A[r * 32 + 4 * q + pr[1]];
        nib[r * 8 + q] = pr[0] | (pr[1] << 2);
      }
    }
  } else {
    stored = A;
  }
  // Shared-memory images: A is 64 rows x 32 bytes, B kN rows x 2k bytes, both K-major.
  const uint32_t a_rowbytes = 32;
  const uint32_t b_rowbytes = static_cast<uint32_t>(2 * k);
  WgmmaArgs& g = p.args;
  g.swizzle = swizzle;
  if (swizzle == 0) {
    g.a_lbo = 128;  // core matrices along K, then 8-row groups
    g.a_sbo = 128 * (a_rowbytes / 16);
    g.b_lbo = 128;
    g.b_sbo = 128 * (b_rowbytes / 16);
  } else {
    g.a_lbo = g.b_lbo = 16;  // unused: K fits one swizzle row
    g.a_sbo = g.b_sbo = 8 * static_cast<uint32_t>(swizzle);
  }
  g.a_bytes = static_cast<int>(swizzle == 0 ? 64 * a_rowbytes : 64 / 8 * g.a_sbo);
  g.b_bytes = static_cast<int>(swizzle == 0 ? kN * b_rowbytes : kN / 8 * g.b_sbo);
  p.a_img.assign(static_cast<size_t>(g.a_bytes) / 2, bits(99.0f));  // bytes no row maps to
  p.b_img.assign(static_cast<size_t>(g.b_bytes) / 2, bits(99.0f));
  for (int r = 0; r < 64; ++r) {
    for (int c = 0; c < stored_k; ++c) {
      p.a_img[layout_offset(swizzle, r, 2 * c, g.a_lbo, g.a_sbo) / 2] = bits(stored[r * stored_k + c]);
    }
  }
  for (int n = 0; n < kN; ++n) {
    for (int c = 0; c < k; ++c) {
      p.b_img[layout_offset(swizzle, n, 2 * c, g.b_lbo, g.b_sbo) / 2] = bits(B[n * k + c]);
    }
  }
  p.e.assign(128, 0);
  p.a_regs.assign(512, 0);
  p.d.assign(128 * 32, 0.0f);
  p.want.assign(128 * 32, 0.0f);
  for (int t = 0; t < 128; ++t) {
    const int w = t / 32;
    const int l = t % 32;
    const int gid = l / 4;
    // Sparse metadata, selector 0: lanes 4g + h of warp w hold rows 16w + g (bits 0-15) and 16w + g + 8.
    if (l % 4 < 2) {
      const int h = l % 2;
      uint32_t e = 0;
      for (int q = 0; q < 4; ++q) {
        e |= static_cast<uint32_t>(nib[(16 * w + gid) * 8 + 4 * h + q]) << (4 * q);
        e |= static_cast<uint32_t>(nib[(16 * w + gid + 8) * 8 + 4 * h + q]) << (16 + 4 * q);
      }
      p.e[t] = e;
    }
    // The A fragment (A in registers): the m16n8k16 layout of the warp's 16 rows.
    uint16_t av[8];
    for (int i = 0; i < 8; ++i) {
      av[i] = bits(A[(16 * w + gid + 8 * ((i >> 1) & 1)) * 16 + 2 * (l % 4) + (i & 1) + 8 * (i >> 2)]);
    }
    for (int j = 0; j < 4; ++j) p.a_regs[4 * t + j] = pack(av[2 * j], av[2 * j + 1]);
    // Accumulator j: row 16w + l/4 + 8 ((j >> 1) & 1), column 8 (j >> 2) + 2 (l % 4) + (j & 1).
    for (int j = 0; j < kN / 2; ++j) {
      const int row = 16 * w + gid + 8 * ((j >> 1) & 1);
      const int col = 8 * (j >> 2) + 2 * (l % 4) + (j & 1);
      float s = 0.0f;
      for (int kk = 0; kk < k; ++kk) s += A[row * k + kk] * B[col * k + kk];
      p.d[t * 32 + j] = C[row * kN + col];
      p.want[t * 32 + j] = C[row * kN + col] + (mode == 3 ? 2.0f : 1.0f) * s;
    }
  }
  g.a_img = p.a_img.data();
  g.b_img = p.b_img.data();
  g.e = p.e.data();
  g.a_regs = p.a_regs.data();
  g.d = p.d.data();
  g.mode = mode;
  return p;
}

void case_wgmma() {
  struct Case {
    int mode;
    int swizzle;
    const char* what;
  };
  const Case cases[] = {{0, 128, "dense wgmma, both operands 128-byte swizzled"},
                        {0, 64, "dense wgmma, 64-byte swizzle"},
                        {0, 32, "dense wgmma, 32-byte swizzle"},
                        {0, 0, "dense wgmma, no swizzle (core matrices)"},
                        {1, 128, "dense wgmma, A in registers"},
                        {2, 128, "sparse wgmma.sp, 128-byte swizzle"},
                        {3, 128, "wgmma.sp on accumulators still in flight (chained across groups)"}};
  for (const Case& c : cases) {
    WgmmaProblem p = make_wgmma(c.mode, c.swizzle, 30 + c.mode);
    if (!run("wgmma", wgmma_kernel, 1, 128, 16384 * 3, p.args)) return;
    expect(p.d == p.want, c.what);
  }
}

void case_wgmma_fault(int mode) {
  WgmmaProblem p = make_wgmma(mode, 128, 40);
  run("wgmma_fault", wgmma_kernel, 1, 128, 16384 * 3, p.args);
}

// cp.async data read by wgmma without fence.proxy.async in between.
__global__ void proxy_fence_kernel(const uint4* a, const uint4* b, float* d, bool fence) {
  PERFKERN_DYNAMIC_SMEM(unsigned char, raw);
  unsigned char* smem = raw + ((1024 - ptx::smem_addr(raw) % 1024) % 1024);
  for (int i = threadIdx.x; i < 128; i += 128) {
    ptx::cp_async_cg_shared_global_16(ptx::smem_addr(smem + 16 * i), a + i, 16);
    ptx::cp_async_cg_shared_global_16(ptx::smem_addr(smem + 8192 + 16 * i), b + i, 16);
  }
  ptx::cp_async_commit_group();
  ptx::cp_async_wait_group<0>();
  if (fence) ptx::fence_proxy_async_shared_cta();
  __syncthreads();
  float acc[32] = {};
  ptx::wgmma_fence_sync_aligned();
  emu::wgmma_mma_async(emu::Dtype::kF16, 64, acc, make_desc(ptx::smem_addr(smem), 16, 1024, 128),
                       make_desc(ptx::smem_addr(smem + 8192), 16, 1024, 128), 0);
  ptx::wgmma_commit_group_sync_aligned();
  ptx::wgmma_wait_group_sync_aligned<0>();
  d[threadIdx.x] = acc[0];
}

void case_proxy_fence(bool fence) {
  std::vector<uint4> a(256, make_uint4(0, 0, 0, 0));
  std::vector<uint4> b(256, make_uint4(0, 0, 0, 0));
  std::vector<float> d(128);
  run("proxy_fence", proxy_fence_kernel, 1, 128, 20480, a.data(), b.data(), d.data(), fence);
}

// ---- schedules -----------------------------------------------------------------------------------------------

__global__ void order_kernel(int* order, int* counter) {
  order[atomicAdd(counter, 1)] = static_cast<int>(threadIdx.x);
  __syncthreads();
  order[atomicAdd(counter, 1)] = static_cast<int>(threadIdx.x);
}

void case_schedule() {
  std::vector<int> order(128, -1);
  int counter = 0;
  if (!run("order", order_kernel, 1, 64, 0, order.data(), &counter)) return;
  for (int v : order) std::printf("%d ", v);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<void()>> cases = {
      {"barrier", case_barrier},
      {"missing_barrier", case_missing_barrier},
      {"syncthreads_reduce", case_syncthreads_reduce},
      {"named_barriers", case_named_barriers},
      {"warp", case_warp},
      {"atomics", case_atomics},
      {"fp16", case_fp16},
      {"ldg_misaligned", case_ldg_misaligned},
      {"cp_async", case_cp_async},
      {"cp_async_race", case_cp_async_race},
      {"smem_overflow", case_smem_overflow},
      {"partial_shfl", case_partial_shfl},
      {"split_barrier", case_split_barrier},
      {"mismatch", case_mismatch},
      {"ldmatrix", case_ldmatrix},
      {"mma", case_mma},
      {"mma_sp_bad_metadata", case_mma_sp_bad_metadata},
      {"wgmma", case_wgmma},
      {"wgmma_operand_changed", [] { case_wgmma_fault(4); }},
      {"wgmma_accumulator_written", [] { case_wgmma_fault(5); }},
      {"wgmma_without_fence", [] { case_wgmma_fault(6); }},
      {"proxy_fence", [] { case_proxy_fence(true); }},
      {"missing_proxy_fence", [] { case_proxy_fence(false); }},
      {"schedule", case_schedule},
  };
  if (argc != 2 || cases.count(argv[1]) == 0) {
    std::printf("usage: emulator_check CASE; cases:");
    for (const auto& c : cases) std::printf(" %s", c.first.c_str());
    std::printf("\n");
    return 2;
  }
  cases.at(argv[1])();
  if (g_failures == 0) std::printf("ok\n");
  return g_failures == 0 ? 0 : 1;
}
