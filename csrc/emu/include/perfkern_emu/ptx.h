// The host twins of the PTX instructions that common/ptx.cuh wraps (csrc/emu/instructions.cpp), written from
// the PTX ISA. Each is executed by every thread that executes the instruction; the collective ones (ldmatrix,
// mma, wgmma) are rendezvous of their warp or warpgroup, and the asynchronous ones keep the hardware's rules:
//   - cp.async: the destination holds poison (0xff bytes) until the wait_group that covers the copy; a write to
//     it in between is reported;
//   - wgmma.mma_async: the operands are read and the product is computed at issue, the accumulator registers
//     hold poison (a NaN) until the covering wgmma.wait_group writes the result; the shared memory it read must
//     be unchanged at that wait, its accumulators untouched, and a wgmma.fence must precede it after a wait;
//   - mma.sp / wgmma.mma_async.sp: metadata whose two indices are not increasing is an error (ordered metadata).
#ifndef PERFKERN_EMU_PTX_H_
#define PERFKERN_EMU_PTX_H_

#include <cstdint>

namespace perfkern {
namespace emu {

enum class Dtype { kF16, kBF16 };

// cp.async.{ca,cg}.shared.global [dst], [src], cp_size, src_size: src_size bytes read now, the rest zeros.
void cp_async(uint32_t dst, const void* src, int cp_size, int src_size);
void cp_async_commit_group();
void cp_async_wait_group(int n);

// ldmatrix.sync.aligned.m8n8{.x1,.x2,.x4}{.trans}.shared.b16: `count` registers per thread.
void ldmatrix(uint32_t* regs, int count, bool trans, uint32_t addr);

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 d, a, b, d.
void mma_m16n8k16(Dtype type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

// mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.{f16,bf16}.{f16,bf16}.f32 d, a, b, d, e, selector.
void mma_sp_m16n8k32(Dtype type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e,
                     int selector);

// wgmma.fence / commit_group / wait_group (.sync.aligned), sm_90a.
void wgmma_fence();
void wgmma_commit_group();
void wgmma_wait_group(int n);

// wgmma.mma_async.sp.sync.aligned.m64n{n}k32.f32.{f16,bf16}: d[n/2] = A (64 x 32, 2:4, descriptor) * B (32 x n,
// descriptor) + (scale_d ? d : 0); both operands K-major (no transpose), metadata e, sparsity selector.
void wgmma_mma_async_sp(Dtype type, int n, float* d, uint64_t a_desc, uint64_t b_desc, uint32_t e, int selector,
                        uint32_t scale_d);

// wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{f16,bf16}, A from shared memory (a_desc) or from registers
// (a_regs: the m16n8k16 A fragment of the warp's 16 rows); both K-major.
void wgmma_mma_async(Dtype type, int n, float* d, uint64_t a_desc, uint64_t b_desc, uint32_t scale_d);
void wgmma_mma_async_rs(Dtype type, int n, float* d, const uint32_t (&a_regs)[4], uint64_t b_desc, uint32_t scale_d);

// fence.proxy.async.shared::cta: the calling thread's cp.async data that has landed becomes visible to wgmma.
void fence_proxy_async();

// bar.sync / bar.arrive with a barrier id and a thread count (a multiple of 32).
void bar_sync(int id, int count);
void bar_arrive(int id, int count);

}  // namespace emu
}  // namespace perfkern

#endif  // PERFKERN_EMU_PTX_H_
