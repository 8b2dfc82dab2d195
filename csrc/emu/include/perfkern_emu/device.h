// CUDA's device-side language for the emulated build: the keywords, the built-in variables, barriers, warp
// collectives (shuffles, votes, reductions: rendezvous of the lanes in the mask, an error when a lane in the mask
// never arrives), atomics (real atomics: blocks run on several host threads), __ldg (alignment checked), the
// shared-window addresses and the everyday integer and float intrinsics.
//
// Every CUDA thread is a fiber; the fibers of a block run on one host thread, switching only at barriers and
// collectives, in a random (seeded) order. Static __shared__ variables are ordinary storage of that host
// thread: per block, as on a GPU, but they have no shared-window address (instructions that take one need
// dynamic shared memory, PERFKERN_DYNAMIC_SMEM).
#ifndef PERFKERN_EMU_DEVICE_H_
#define PERFKERN_EMU_DEVICE_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "perfkern_emu/types.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __constant__ static

namespace perfkern {
namespace emu {

struct ThreadCoords {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

// The calling emulated thread's coordinates (set by the scheduler at every switch; null outside kernels).
extern thread_local const ThreadCoords* tls_coords;
[[noreturn]] void outside_kernel(const char* what);

inline const ThreadCoords& coords(const char* what) {
  if (tls_coords == nullptr) {
    outside_kernel(what);
  }
  return *tls_coords;
}

// Ends the calling thread's kernel with an error (the launch then reports it); never returns.
[[noreturn]] void fault(cudaError_t code, const char* format, ...) __attribute__((format(printf, 2, 3)));

void syncthreads();
int syncthreads_reduce(int op, int predicate);  // op: 0 count, 1 and, 2 or
void syncwarp(unsigned mask);
unsigned active_mask();
unsigned vote(int op, unsigned mask, int predicate);  // op: 0 ballot, 1 any, 2 all
// mode: 0 idx, 1 up, 2 down, 3 xor; the value is moved as `size` raw bytes.
void shfl(int mode, unsigned mask, const void* in, void* out, size_t size, int arg, int width);
unsigned reduce(int op, unsigned mask, unsigned value, bool is_signed);  // op: 0 add, 1 min, 2 max, 3 and, 4 or, 5 xor
void yield();
size_t shared_address(const void* p);
void* shared_pointer(size_t address);
bool is_shared(const void* p);
int64_t clock_ticks();

template <typename T>
T shuffle(int mode, unsigned mask, T var, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move up to 8 bytes");
  T out;
  shfl(mode, mask, &var, &out, sizeof(T), arg, width);
  return out;
}

template <typename T>
T load_global(const T* p) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) {
    fault(cudaErrorMisalignedAddress, "__ldg of %zu bytes from %p: not %zu-byte aligned", sizeof(T),
          static_cast<const void*>(p), alignof(T));
  }
  return *p;
}

template <typename T>
T atomic_cas_loop(T* p, T (*op)(T, T), T v) {
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T next = op(old, v);
  while (!__atomic_compare_exchange(p, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    next = op(old, v);
  }
  return old;
}

}  // namespace emu
}  // namespace perfkern

#define threadIdx (::perfkern::emu::coords("threadIdx").thread_idx)
#define blockIdx (::perfkern::emu::coords("blockIdx").block_idx)
#define blockDim (::perfkern::emu::coords("blockDim").block_dim)
#define gridDim (::perfkern::emu::coords("gridDim").grid_dim)
constexpr int warpSize = 32;

// ---- barriers and warp collectives -----------------------------------------------------------------------

inline void __syncthreads() { perfkern::emu::syncthreads(); }
inline int __syncthreads_count(int p) { return perfkern::emu::syncthreads_reduce(0, p); }
inline int __syncthreads_and(int p) { return perfkern::emu::syncthreads_reduce(1, p); }
inline int __syncthreads_or(int p) { return perfkern::emu::syncthreads_reduce(2, p); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { perfkern::emu::syncwarp(mask); }
inline unsigned __activemask() { return perfkern::emu::active_mask(); }
inline unsigned __ballot_sync(unsigned mask, int p) { return perfkern::emu::vote(0, mask, p); }
inline int __any_sync(unsigned mask, int p) { return static_cast<int>(perfkern::emu::vote(1, mask, p)); }
inline int __all_sync(unsigned mask, int p) { return static_cast<int>(perfkern::emu::vote(2, mask, p)); }

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return perfkern::emu::shuffle(0, mask, var, src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return perfkern::emu::shuffle(1, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return perfkern::emu::shuffle(2, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return perfkern::emu::shuffle(3, mask, var, lane_mask, width);
}

inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return perfkern::emu::reduce(0, mask, v, false); }
inline int __reduce_add_sync(unsigned mask, int v) {
  return static_cast<int>(perfkern::emu::reduce(0, mask, static_cast<unsigned>(v), true));
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return perfkern::emu::reduce(1, mask, v, false); }
inline int __reduce_min_sync(unsigned mask, int v) {
  return static_cast<int>(perfkern::emu::reduce(1, mask, static_cast<unsigned>(v), true));
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return perfkern::emu::reduce(2, mask, v, false); }
inline int __reduce_max_sync(unsigned mask, int v) {
  return static_cast<int>(perfkern::emu::reduce(2, mask, static_cast<unsigned>(v), true));
}
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return perfkern::emu::reduce(3, mask, v, false); }
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return perfkern::emu::reduce(4, mask, v, false); }
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return perfkern::emu::reduce(5, mask, v, false); }

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned) { perfkern::emu::yield(); }
[[noreturn]] inline void __trap() { perfkern::emu::fault(cudaErrorLaunchFailure, "__trap()"); }
inline long long clock64() { return perfkern::emu::clock_ticks(); }

// ---- memory ----------------------------------------------------------------------------------------------

template <typename T>
T __ldg(const T* p) {
  return perfkern::emu::load_global(p);
}

inline size_t __cvta_generic_to_shared(const void* p) { return perfkern::emu::shared_address(p); }
inline void* __cvta_shared_to_generic(size_t a) { return perfkern::emu::shared_pointer(a); }
inline unsigned __isShared(const void* p) { return perfkern::emu::is_shared(p) ? 1u : 0u; }

// ---- atomics (relaxed, as CUDA's) ------------------------------------------------------------------------

#define PERFKERN_EMU_ATOMIC_INT(T)                                                                              \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }                         \
  inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }                         \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }                       \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }                         \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }                           \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }                         \
  inline T atomicMin(T* p, T v) {                                                                              \
    return perfkern::emu::atomic_cas_loop<T>(p, [](T a, T b) { return a < b ? a : b; }, v);                    \
  }                                                                                                            \
  inline T atomicMax(T* p, T v) {                                                                              \
    return perfkern::emu::atomic_cas_loop<T>(p, [](T a, T b) { return a > b ? a : b; }, v);                    \
  }                                                                                                            \
  inline T atomicCAS(T* p, T compare, T v) {                                                                   \
    __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);                   \
    return compare;                                                                                            \
  }

PERFKERN_EMU_ATOMIC_INT(int)
PERFKERN_EMU_ATOMIC_INT(unsigned int)
PERFKERN_EMU_ATOMIC_INT(long long)
PERFKERN_EMU_ATOMIC_INT(unsigned long long)
#undef PERFKERN_EMU_ATOMIC_INT

inline unsigned short atomicCAS(unsigned short* p, unsigned short compare, unsigned short v) {
  __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;
}

inline unsigned atomicInc(unsigned* p, unsigned limit) {
  return perfkern::emu::atomic_cas_loop<unsigned>(p, [](unsigned a, unsigned l) { return a >= l ? 0u : a + 1; },
                                                  limit);
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
  return perfkern::emu::atomic_cas_loop<unsigned>(
      p, [](unsigned a, unsigned l) { return (a == 0 || a > l) ? l : a - 1; }, limit);
}

inline float atomicAdd(float* p, float v) {
  return perfkern::emu::atomic_cas_loop<float>(p, [](float a, float b) { return a + b; }, v);
}
inline double atomicAdd(double* p, double v) {
  return perfkern::emu::atomic_cas_loop<double>(p, [](double a, double b) { return a + b; }, v);
}
inline float atomicExch(float* p, float v) {
  float old;
  __atomic_exchange(p, &v, &old, __ATOMIC_RELAXED);
  return old;
}
inline float atomicMax(float* p, float v) {
  return perfkern::emu::atomic_cas_loop<float>(p, [](float a, float b) { return std::fmax(a, b); }, v);
}
inline float atomicMin(float* p, float v) {
  return perfkern::emu::atomic_cas_loop<float>(p, [](float a, float b) { return std::fmin(a, b); }, v);
}

// ---- integer and float intrinsics ------------------------------------------------------------------------

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) {
    r |= ((x >> i) & 1u) << (31 - i);
  }
  return r;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) {
    r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7))) & 0xffu) << (8 * i);
  }
  return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>((v << (shift & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>(v >> (shift & 31));
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }

inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline int __float_as_int(float f) {
  int x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline double __longlong_as_double(long long x) {
  double d;
  std::memcpy(&d, &x, 8);
  return d;
}
inline long long __double_as_longlong(double d) {
  long long x;
  std::memcpy(&x, &d, 8);
  return x;
}

inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

#define PERFKERN_EMU_MINMAX(T)                            \
  inline T min(T a, T b) { return a < b ? a : b; }        \
  inline T max(T a, T b) { return a > b ? a : b; }
PERFKERN_EMU_MINMAX(int)
PERFKERN_EMU_MINMAX(unsigned int)
PERFKERN_EMU_MINMAX(long long)
PERFKERN_EMU_MINMAX(unsigned long long)
#undef PERFKERN_EMU_MINMAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

#endif  // PERFKERN_EMU_DEVICE_H_
