// The x86 intrinsics the SIMD kernels use. Built with PERFKERN_CPU_SIMDE (a test-only build, see
// tests/csrc/cpu_isa_emulated.cpp), the same kernel sources compile against SIMDe's portable implementations of
// those intrinsics instead, so the AVX-512 kernels' logic can be checked on a CPU without AVX-512.
#ifndef PERFKERN_CPU_SIMD_H_
#define PERFKERN_CPU_SIMD_H_

#if defined(PERFKERN_CPU_SIMDE)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#else
#include <immintrin.h>
#endif

#endif  // PERFKERN_CPU_SIMD_H_
