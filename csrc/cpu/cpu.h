// The CPU part of the core: what the launchers (mm.cpp) share with the per-ISA kernel files and the thread pool.
// Not installed; nothing here is part of the ABI.
//
// A product out = x . W^T (+ epilogue) is computed by one of two kernel shapes, both in every ISA:
//   rows:  vectorised along K; each x row is gathered by the weight's metadata inside registers (in-lane
//          permutes), so the weight streams through once at full width. For decode (small M), where the
//          weight's bytes are the cost.
//   cols:  vectorised along M (an outer product): each kept weight value is broadcast and multiplies a column
//          of x^T, whose row the metadata names. No lane is wasted on a pruned weight, so it does half the
//          multiply-adds of the dense product. For M >= kColsMinM; beyond one vector of M it takes K in blocks
//          whose slice of x^T stays in L2 (cols.h).
// Both accumulate in fp32 and end in one epilogue (bias, the low-rank term, the cast to the output dtype).
#ifndef PERFKERN_CPU_CPU_H_
#define PERFKERN_CPU_CPU_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "perfkern/perfkern.h"

#if defined(__GNUC__)
#define PERFKERN_CPU_INLINE inline __attribute__((always_inline))
#else
#define PERFKERN_CPU_INLINE inline
#endif

namespace perfkern {
namespace cpu {

// f(std::integral_constant<int, i>{}) for i = 0 .. N-1, unrolled: arrays indexed by those constants stay in
// registers (a loop over them, even one the compiler unrolls later, keeps them in memory).
template <class F, int... I>
PERFKERN_CPU_INLINE void unroll_each(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, class F>
PERFKERN_CPU_INLINE void unroll(F&& f) {
  unroll_each(f, std::make_integer_sequence<int, N>{});
}

// M from which the cols kernel runs (below it, the rows kernel).
constexpr int64_t kColsMinM = 6;
// The cols kernel beyond one vector of M: bytes of x^T per block of K (kept in L2 while weight rows pass over it)
// and weight rows per pass, whose sums (rows x the padded M) wait in the thread's scratch.
constexpr int64_t kColsBlockBytes = 64 * 1024;
constexpr int64_t kColsSweepRows = 32;

// x as a kernel reads it, prepared once per call by the launcher (fp32):
//   kRowsPlain:  [m][k], as x.
//   kRowsPaired: [m][k], each block of 32 columns (2 metadata words c, c+1) stored as the four 8-float vectors
//                [x(c, q) | x(c+1, q)] for q = 0..3, x(c, q) being the 4 columns of group q of word c: what the
//                AVX2 rows kernel permutes in-lane. A trailing 16-column word stays plain.
//   kColsT:      [k][mp], x transposed, m padded with zeros to mp (a power of two, at least the vector width).
//   kNative:     not prepared: the kernel reads the caller's x (x_native) in its own dtype.
enum class XLayout { kRowsPlain, kRowsPaired, kColsT, kNative };

struct Problem {
  bool sparse;  // values/meta (2:4) or a dense weight in `values` (meta null)
  const void* values;
  const int16_t* meta;
  int64_t values_stride;
  int64_t meta_stride;
  perfkern_dtype_t dtype;
  int64_t m, n, k;
  const void* bias;
  int64_t bias_stride;
  const float* lora_t;  // [m][r] fp32, prepared by the launcher
  const void* lora_b;
  int64_t b_stride0, b_stride1;
  int64_t r;
  float scale;
  void* out;
  int64_t out_stride;
  // Prepared x.
  XLayout layout;
  const float* x;
  int64_t x_stride;  // floats between rows (rows layouts) or between k (kColsT: mp)
  const void* x_native;  // the caller's x (for kernels that read bf16 x directly), row stride x_native_stride
  int64_t x_native_stride;
};

// Per-thread scratch a kernel may use (64-byte aligned, `floats` long): a row of values converted to fp32.
struct Scratch {
  float* data;
  int64_t floats;
};

// The kernels of one ISA: rows [n0, n1) of the output, all M. `scratch` holds at least scratch_floats(p).
struct Kernels {
  XLayout (*rows_layout)(const Problem& p);
  int64_t vector_width;  // the cols kernel's M padding
  void (*rows)(const Problem& p, int64_t n0, int64_t n1, Scratch scratch);
  void (*cols)(const Problem& p, int64_t n0, int64_t n1, Scratch scratch);
};

const Kernels& scalar_kernels();
#if defined(PERFKERN_CPU_X86)
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();
const Kernels& avx512_bf16_kernels();
#endif

// Thread pool: pool_run(fn, ctx, threads) calls fn(ctx, 0, threads) on the calling thread and fn(ctx, t, threads)
// on each persistent worker t in [1, threads) that wakes before the caller's call returns; it returns when every
// call that started is done. So fn must share the work out itself (take chunks from a counter in ctx): the
// caller's call alone must be able to finish it. One job at a time (callers are serialised).
using TaskFn = void (*)(void* ctx, int thread, int threads);
void pool_run(TaskFn fn, void* ctx, int threads);
// The pool's scratch buffer, at least `bytes` long and 64-byte aligned, grown (never shrunk) when too small.
// Valid until the next call; only for the caller that holds the pool (inside pool_locked).
void* pool_scratch(size_t bytes);
// Serialises launchers: everything from preparing the scratch to the end of the parallel run holds it.
class PoolLock {
 public:
  PoolLock();
  ~PoolLock();
  PoolLock(const PoolLock&) = delete;
  PoolLock& operator=(const PoolLock&) = delete;
};

// ---- element conversions (portable; the ISA files use their own vector forms) ---------------------------

inline float bf16_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x40u);  // NaN stays a (quiet) NaN
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(bits >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_f16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf (or is inf)
  if (abs < 0x38800000u) {  // a subnormal half (or zero): round abs * 2^24 to an integer, ties to even
    if (abs < 0x33000000u) return sign;  // below half the smallest subnormal
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exp;  // 14..24
    uint32_t v = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (v & 1u))) ++v;
    return static_cast<uint16_t>(sign | v);
  }
  uint32_t v = abs - 0x38000000u;  // rebias the exponent 127 -> 15
  v += 0xfffu + ((v >> 13) & 1u);
  return static_cast<uint16_t>(sign | (v >> 13));
}

inline float load_f32(const void* base, int64_t i, perfkern_dtype_t dtype) {
  switch (dtype) {
    case PERFKERN_DTYPE_F32:
      return static_cast<const float*>(base)[i];
    case PERFKERN_DTYPE_BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    default:
      return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
  }
}

inline void store_f32(void* base, int64_t i, float v, perfkern_dtype_t dtype) {
  switch (dtype) {
    case PERFKERN_DTYPE_F32:
      static_cast<float*>(base)[i] = v;
      break;
    case PERFKERN_DTYPE_BF16:
      static_cast<uint16_t*>(base)[i] = f32_to_bf16(v);
      break;
    default:
      static_cast<uint16_t*>(base)[i] = f32_to_f16(v);
      break;
  }
}

// dst[i] = src[i * stride] as fp32, for i < count.
inline void load_row_f32(const void* src, int64_t offset, int64_t stride, int64_t count, perfkern_dtype_t dtype,
                         float* dst) {
  if (dtype == PERFKERN_DTYPE_F32 && stride == 1) {
    std::memcpy(dst, static_cast<const float*>(src) + offset, static_cast<size_t>(count) * sizeof(float));
    return;
  }
  if (dtype == PERFKERN_DTYPE_BF16 && stride == 1) {  // the switch out of the loop, so it vectorises
    const uint16_t* h = static_cast<const uint16_t*>(src) + offset;
    for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(h[i]);
    return;
  }
  for (int64_t i = 0; i < count; ++i) dst[i] = load_f32(src, offset + i * stride, dtype);
}

// sum_i a[i] b[i] in 8 interleaved partial sums (which the compiler vectorises without reassociating).
inline float dot_f32(const float* a, const float* b, int64_t count) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    for (int j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
  }
  for (; i < count; ++i) part[0] += a[i] * b[i];
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
}

// The rows kernels' tail when K % 32 == 16: sum plus the last 16 columns (a single metadata word) against x row m
// in the plain layout there. vrow and mrow are the weight row's values (dtype) and metadata.
inline float add_sparse_tail(float sum, const Problem& p, const void* vrow, const int16_t* mrow, int64_t m,
                             perfkern_dtype_t dtype) {
  const int64_t c = p.k / 16 - 1;
  const uint32_t w = static_cast<uint16_t>(mrow[c]);
  const float* x = p.x + m * p.x_stride + 16 * c;
  for (int q = 0; q < 4; ++q) {
    const uint32_t nib = (w >> (4 * q)) & 15u;
    const int64_t v = 8 * c + 2 * q;
    sum += load_f32(vrow, v, dtype) * x[4 * q + (nib & 3u)] + load_f32(vrow, v + 1, dtype) * x[4 * q + (nib >> 2)];
  }
  return sum;
}

// The epilogue of output column n for the x rows [m0, m0 + count): acc[j * acc_stride] holds
// sum_k x[m0 + j, k] W[n, k] and is overwritten; out gets acc + bias[n] + scale * lora_t[m] . lora_b[n].
inline void finish_column(const Problem& p, int64_t n, int64_t m0, int64_t count, float* acc, int64_t acc_stride) {
  const float bias = p.bias != nullptr ? load_f32(p.bias, n * p.bias_stride, p.dtype) : 0.0f;
  constexpr int64_t kChunk = 64;
  float b[kChunk];
  for (int64_t j = 0; j < count; ++j) acc[j * acc_stride] += bias;
  for (int64_t i0 = 0; i0 < p.r; i0 += kChunk) {
    const int64_t len = p.r - i0 < kChunk ? p.r - i0 : kChunk;
    load_row_f32(p.lora_b, n * p.b_stride0 + i0 * p.b_stride1, p.b_stride1, len, p.dtype, b);
    for (int64_t j = 0; j < count; ++j) {
      acc[j * acc_stride] += p.scale * dot_f32(p.lora_t + (m0 + j) * p.r + i0, b, len);
    }
  }
  for (int64_t j = 0; j < count; ++j) store_f32(p.out, (m0 + j) * p.out_stride + n, acc[j * acc_stride], p.dtype);
}

}  // namespace cpu
}  // namespace perfkern

#endif  // PERFKERN_CPU_CPU_H_
