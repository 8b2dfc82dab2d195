// fp16 and bf16 for the emulated build: CUDA's __half, __half2, __nv_bfloat16 and __nv_bfloat162 with the
// conversions (round to nearest even, NaN kept, subnormals exact) and the arithmetic intrinsics kernels use.
// Arithmetic rounds once to the 16-bit type from fp32 (add, sub, mul, div: exact as IEEE for these formats) or
// from fp64 (fma).
#ifndef PERFKERN_EMU_FP16_H_
#define PERFKERN_EMU_FP16_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "perfkern_emu/types.h"

namespace perfkern {
namespace emu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16 from binary32, round to nearest even.
inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) {  // NaN: quiet, top payload bits kept
    return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  }
  if (a >= 0x477ff000u) {  // >= 65520 (the midpoint between 65504 and 2^16) and inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (a >= 0x38800000u) {  // normal: |f| >= 2^-14
    uint32_t h = ((((a >> 23) - 127 + 15) << 10) | ((a & 0x7fffffu) >> 13));
    const uint32_t rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) {
      ++h;  // a carry into the exponent is the right result
    }
    return static_cast<uint16_t>(sign | h);
  }
  if (a < 0x33000000u) {  // below 2^-25: to zero (2^-25 itself ties to the even zero)
    return sign;
  }
  // Subnormal: units of 2^-24.
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const int shift = 126 - static_cast<int>(a >> 23);
  uint32_t h = mant >> shift;
  const uint32_t rest = mant & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1);
  if (rest > halfway || (rest == halfway && (h & 1u))) {
    ++h;
  }
  return static_cast<uint16_t>(sign | h);
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) {
    return bits_float(sign | 0x7f800000u | (mant << 13));
  }
  if (exp != 0) {
    return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
  }
  const float v = std::ldexp(static_cast<float>(mant), -24);  // exact
  return sign ? -v : v;
}

// bfloat16 from binary32, round to nearest even; NaN stays NaN (quiet).
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);
  }
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

}  // namespace emu
}  // namespace perfkern

struct __half_raw {
  unsigned short x;
};

struct alignas(2) __half {
  unsigned short __x;
  __half() = default;
  __half(const __half_raw& r) : __x(r.x) {}
  __half(float f) : __x(perfkern::emu::float_to_half_bits(f)) {}
  __half(double d) : __x(perfkern::emu::float_to_half_bits(static_cast<float>(d))) {}
  __half(int i) : __x(perfkern::emu::float_to_half_bits(static_cast<float>(i))) {}
  operator float() const { return perfkern::emu::half_bits_to_float(__x); }
  operator __half_raw() const { return __half_raw{__x}; }
};

struct alignas(4) __half2 {
  __half x, y;
};

struct __nv_bfloat16_raw {
  unsigned short x;
};

struct alignas(2) __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
  __nv_bfloat16(float f) : __x(perfkern::emu::float_to_bf16_bits(f)) {}
  __nv_bfloat16(double d) : __x(perfkern::emu::float_to_bf16_bits(static_cast<float>(d))) {}
  __nv_bfloat16(int i) : __x(perfkern::emu::float_to_bf16_bits(static_cast<float>(i))) {}
  operator float() const { return perfkern::emu::bf16_bits_to_float(__x); }
  operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};

struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

// ---- conversions -----------------------------------------------------------------------------------------

inline __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __short_as_half(short s) { return __ushort_as_half(static_cast<unsigned short>(s)); }
inline short __half_as_short(__half h) { return static_cast<short>(h.__x); }
inline float __half2float(__half h) { return perfkern::emu::half_bits_to_float(h.__x); }
inline __half __float2half(float f) { return __ushort_as_half(perfkern::emu::float_to_half_bits(f)); }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline __half2 __halves2half2(__half lo, __half hi) { return __half2{lo, hi}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half(lo), __float2half(hi)}; }
inline __half2 __float2half2_rn(float f) { return __floats2half2_rn(f, f); }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16(__nv_bfloat16_raw{u}); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __short_as_bfloat16(short s) { return __ushort_as_bfloat16(static_cast<unsigned short>(s)); }
inline short __bfloat16_as_short(__nv_bfloat16 b) { return static_cast<short>(b.__x); }
inline float __bfloat162float(__nv_bfloat16 b) { return perfkern::emu::bf16_bits_to_float(b.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __ushort_as_bfloat16(perfkern::emu::float_to_bf16_bits(f)); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return __nv_bfloat162{lo, hi}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__float2bfloat16(lo), __float2bfloat16(hi)};
}
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return __floats2bfloat162_rn(f, f); }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 b) { return float2{__bfloat162float(b.x), __bfloat162float(b.y)}; }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 b) { return b.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 b) { return b.y; }
inline float __low2float(__nv_bfloat162 b) { return __bfloat162float(b.x); }
inline float __high2float(__nv_bfloat162 b) { return __bfloat162float(b.y); }

// ---- arithmetic: each op in fp32 (fma in fp64), rounded once to the 16-bit type ----------------------------

#define PERFKERN_EMU_ARITH(T, T2, TO_F, FROM_F)                                                               \
  inline T __hadd(T a, T b) { return FROM_F(TO_F(a) + TO_F(b)); }                                             \
  inline T __hsub(T a, T b) { return FROM_F(TO_F(a) - TO_F(b)); }                                             \
  inline T __hmul(T a, T b) { return FROM_F(TO_F(a) * TO_F(b)); }                                             \
  inline T __hdiv(T a, T b) { return FROM_F(TO_F(a) / TO_F(b)); }                                             \
  inline T __hfma(T a, T b, T c) {                                                                             \
    return FROM_F(static_cast<float>(static_cast<double>(TO_F(a)) * TO_F(b) + TO_F(c)));                      \
  }                                                                                                           \
  inline T __hneg(T a) { return FROM_F(-TO_F(a)); }                                                           \
  inline T __habs(T a) { return FROM_F(std::fabs(TO_F(a))); }                                                 \
  inline T __hmax(T a, T b) { return FROM_F(std::fmax(TO_F(a), TO_F(b))); }                                   \
  inline T __hmin(T a, T b) { return FROM_F(std::fmin(TO_F(a), TO_F(b))); }                                   \
  inline bool __heq(T a, T b) { return TO_F(a) == TO_F(b); }                                                  \
  inline bool __hne(T a, T b) { return TO_F(a) != TO_F(b); }                                                  \
  inline bool __hlt(T a, T b) { return TO_F(a) < TO_F(b); }                                                   \
  inline bool __hle(T a, T b) { return TO_F(a) <= TO_F(b); }                                                  \
  inline bool __hgt(T a, T b) { return TO_F(a) > TO_F(b); }                                                   \
  inline bool __hge(T a, T b) { return TO_F(a) >= TO_F(b); }                                                  \
  inline bool __hisnan(T a) { return std::isnan(TO_F(a)); }                                                   \
  inline T operator+(const T& a, const T& b) { return __hadd(a, b); }                                         \
  inline T operator-(const T& a, const T& b) { return __hsub(a, b); }                                         \
  inline T operator*(const T& a, const T& b) { return __hmul(a, b); }                                         \
  inline T operator/(const T& a, const T& b) { return __hdiv(a, b); }                                         \
  inline T operator-(const T& a) { return __hneg(a); }                                                        \
  inline T2 __hadd2(T2 a, T2 b) { return T2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }                            \
  inline T2 __hsub2(T2 a, T2 b) { return T2{__hsub(a.x, b.x), __hsub(a.y, b.y)}; }                            \
  inline T2 __hmul2(T2 a, T2 b) { return T2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }                            \
  inline T2 __hfma2(T2 a, T2 b, T2 c) { return T2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }            \
  inline T2 __hmax2(T2 a, T2 b) { return T2{__hmax(a.x, b.x), __hmax(a.y, b.y)}; }                            \
  inline T2 __hmin2(T2 a, T2 b) { return T2{__hmin(a.x, b.x), __hmin(a.y, b.y)}; }                            \
  inline T2 __hneg2(T2 a) { return T2{__hneg(a.x), __hneg(a.y)}; }                                            \
  inline T2 __habs2(T2 a) { return T2{__habs(a.x), __habs(a.y)}; }

PERFKERN_EMU_ARITH(__half, __half2, __half2float, __float2half)
PERFKERN_EMU_ARITH(__nv_bfloat16, __nv_bfloat162, __bfloat162float, __float2bfloat16)

#undef PERFKERN_EMU_ARITH

#endif  // PERFKERN_EMU_FP16_H_
