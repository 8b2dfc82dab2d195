// Every inline-PTX instruction of the core, one instruction per wrapper (kernels never write `asm`). Each wrapper
// has a host twin in the emulated build: the emulator's implementation of the instruction, written from the PTX
// ISA (csrc/emu/instructions.cpp), with the hardware's asynchrony and its invalid-input rules enforced.
//
// Adding an instruction: one wrapper here, `asm` in the device branch, the emulator call in the other; name it
// after the instruction (dots and colons as underscores) and keep its operands in the instruction's order.
#ifndef PERFKERN_COMMON_PTX_CUH_
#define PERFKERN_COMMON_PTX_CUH_

#include <cstdint>

#include <cuda_runtime.h>

#include "common/kernel.cuh"

#if PERFKERN_DEVICE_CODE

namespace perfkern {
namespace ptx {

// The shared-window address (what .shared instructions and matrix descriptors take) of a pointer into the
// block's shared memory.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- cp.async (sm_80): global -> shared copies that land at the covering wait_group ----------------------

// 16 bytes global -> shared, bypassing L1; the bytes past src_bytes (all 16 when src_bytes = 0) are zeros and
// are not read.
__device__ __forceinline__ void cp_async_cg_shared_global_16(uint32_t dst, const void* src, int src_bytes) {
#ifdef PERFKERN_EMULATE
  emu::cp_async(dst, src, 16, src_bytes);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit_group() {
#ifdef PERFKERN_EMULATE
  emu::cp_async_commit_group();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
#ifdef PERFKERN_EMULATE
  emu::cp_async_wait_group(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// ---- warp-level matrix instructions ----------------------------------------------------------------------

// Four 8x8 b16 matrices from shared memory; lane 8j + i gives the address of row i of matrix j.
__device__ __forceinline__ void ldmatrix_sync_aligned_m8n8_x4_shared_b16(uint32_t (&r)[4], uint32_t addr) {
#ifdef PERFKERN_EMULATE
  emu::ldmatrix(r, 4, false, addr);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

// The same, each matrix transposed on the way: lane 4g + t receives elements (2t, g) and (2t + 1, g) of a matrix
// stored row by row (the fragment of an operand whose rows in shared memory run along the reduction).
__device__ __forceinline__ void ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(uint32_t (&r)[4], uint32_t addr) {
#ifdef PERFKERN_EMULATE
  emu::ldmatrix(r, 4, true, addr);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

// d += A (16 x 32, 2:4: 16 x 16 stored, metadata e, sparsity selector kSel) * B (32 x 8), fp32 accumulators.
template <int kSel>
__device__ __forceinline__ void mma_sp_m16n8k32_f32_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                                        uint32_t e) {
#ifdef PERFKERN_EMULATE
  emu::mma_sp_m16n8k32(emu::Dtype::kF16, d, a, b, e, kSel);
#else
  asm("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, %13;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e),
        "n"(kSel));
#endif
}

template <int kSel>
__device__ __forceinline__ void mma_sp_m16n8k32_f32_bf16(float (&d)[4], const uint32_t (&a)[4],
                                                         const uint32_t (&b)[4], uint32_t e) {
#ifdef PERFKERN_EMULATE
  emu::mma_sp_m16n8k32(emu::Dtype::kBF16, d, a, b, e, kSel);
#else
  asm("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, %13;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e),
        "n"(kSel));
#endif
}

// d += A (16 x 16) * B (16 x 8), dense, fp32 accumulators.
__device__ __forceinline__ void mma_m16n8k16_f32_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef PERFKERN_EMULATE
  emu::mma_m16n8k16(emu::Dtype::kF16, d, a, b);
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f32_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef PERFKERN_EMULATE
  emu::mma_m16n8k16(emu::Dtype::kBF16, d, a, b);
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ---- sm_90a: warpgroup-level asynchronous matrix instructions --------------------------------------------

#if PERFKERN_ARCH_SM90A

__device__ __forceinline__ void wgmma_fence_sync_aligned() {
#ifdef PERFKERN_EMULATE
  emu::wgmma_fence();
#else
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit_group_sync_aligned() {
#ifdef PERFKERN_EMULATE
  emu::wgmma_commit_group();
#else
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most N of the warpgroup's committed wgmma groups are pending; their accumulators are then
// written.
template <int N>
__device__ __forceinline__ void wgmma_wait_group_sync_aligned() {
#ifdef PERFKERN_EMULATE
  emu::wgmma_wait_group(N);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// No instruction: keeps the compiler from moving accesses to the accumulators across the asynchronous wgmma
// window (the emulator needs nothing: its wgmma reads and writes the registers at issue and at the wait).
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#ifdef PERFKERN_EMULATE
  (void)d;
#else
#pragma unroll
  for (int i = 0; i < N; ++i) {
    asm volatile("" : "+f"(d[i])::"memory");
  }
#endif
}

// Shared memory written through the generic proxy (cp.async, st.shared) becomes visible to the tensor cores'
// async proxy.
__device__ __forceinline__ void fence_proxy_async_shared_cta() {
#ifdef PERFKERN_EMULATE
  emu::fence_proxy_async();
#else
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

#define PERFKERN_ACC8(i)                                                                                \
  "+f"(d[(i)]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]), "+f"(d[(i) + 5]), \
      "+f"(d[(i) + 6]), "+f"(d[(i) + 7])
#define PERFKERN_ACC32 PERFKERN_ACC8(0), PERFKERN_ACC8(8), PERFKERN_ACC8(16), PERFKERN_ACC8(24)
#define PERFKERN_ACC64 PERFKERN_ACC32, PERFKERN_ACC8(32), PERFKERN_ACC8(40), PERFKERN_ACC8(48), PERFKERN_ACC8(56)

#define PERFKERN_REGS32                                                                                     \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define PERFKERN_REGS64                                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "  \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "   \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d (64 x N, fp32) = A (64 x 32, 2:4, shared memory, descriptor a_desc) * B (32 x N, shared memory, b_desc)
// + (scale_d ? d : 0); both operands K-major, metadata e, sparsity selector 0.
#define PERFKERN_WGMMA_SP(N, TYPE, REGS, ACC, OA, OB, OE, OS)                                                \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #OS ", 0;\n"                                             \
               "wgmma.mma_async.sp.sync.aligned.m64n" #N "k32.f32." TYPE "." TYPE " " REGS ", %" #OA ", %" #OB \
               ", %" #OE ", 0, p, 1, 1, 0, 0;\n}\n"                                                          \
               : ACC                                                                                        \
               : "l"(a_desc), "l"(b_desc), "r"(e), "r"(scale_d)                                             \
               : "memory")

__device__ __forceinline__ void wgmma_mma_async_sp_m64n64k32_f32_f16(float (&d)[32], uint64_t a_desc,
                                                                     uint64_t b_desc, uint32_t e, uint32_t scale_d) {
#ifdef PERFKERN_EMULATE
  emu::wgmma_mma_async_sp(emu::Dtype::kF16, 64, d, a_desc, b_desc, e, 0, scale_d);
#else
  PERFKERN_WGMMA_SP(64, "f16", PERFKERN_REGS32, PERFKERN_ACC32, 32, 33, 34, 35);
#endif
}

__device__ __forceinline__ void wgmma_mma_async_sp_m64n64k32_f32_bf16(float (&d)[32], uint64_t a_desc,
                                                                      uint64_t b_desc, uint32_t e, uint32_t scale_d) {
#ifdef PERFKERN_EMULATE
  emu::wgmma_mma_async_sp(emu::Dtype::kBF16, 64, d, a_desc, b_desc, e, 0, scale_d);
#else
  PERFKERN_WGMMA_SP(64, "bf16", PERFKERN_REGS32, PERFKERN_ACC32, 32, 33, 34, 35);
#endif
}

__device__ __forceinline__ void wgmma_mma_async_sp_m64n128k32_f32_f16(float (&d)[64], uint64_t a_desc,
                                                                      uint64_t b_desc, uint32_t e, uint32_t scale_d) {
#ifdef PERFKERN_EMULATE
  emu::wgmma_mma_async_sp(emu::Dtype::kF16, 128, d, a_desc, b_desc, e, 0, scale_d);
#else
  PERFKERN_WGMMA_SP(128, "f16", PERFKERN_REGS64, PERFKERN_ACC64, 64, 65, 66, 67);
#endif
}

__device__ __forceinline__ void wgmma_mma_async_sp_m64n128k32_f32_bf16(float (&d)[64], uint64_t a_desc,
                                                                       uint64_t b_desc, uint32_t e, uint32_t scale_d) {
#ifdef PERFKERN_EMULATE
  emu::wgmma_mma_async_sp(emu::Dtype::kBF16, 128, d, a_desc, b_desc, e, 0, scale_d);
#else
  PERFKERN_WGMMA_SP(128, "bf16", PERFKERN_REGS64, PERFKERN_ACC64, 64, 65, 66, 67);
#endif
}

#undef PERFKERN_WGMMA_SP
#undef PERFKERN_REGS64
#undef PERFKERN_REGS32
#undef PERFKERN_ACC64
#undef PERFKERN_ACC32
#undef PERFKERN_ACC8

#endif  // PERFKERN_ARCH_SM90A

}  // namespace ptx
}  // namespace perfkern

#endif  // PERFKERN_DEVICE_CODE

#endif  // PERFKERN_COMMON_PTX_CUH_
