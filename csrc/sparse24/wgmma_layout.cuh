// Layout of the Hopper 2:4 sparse GEMM (mm_wgmma_kernel.cuh): shared-memory tiles in the canonical
// 128-byte-swizzled K-major layout that wgmma reads through matrix descriptors, the descriptors
// themselves, and the lane maps of the metadata and accumulator fragments of
// wgmma.mma_async.sp m64nNk32 (16-bit inputs, fp32 accumulators).
//
// As in mma_layout.cuh the product is the transposed output tile out^T[n, m] = sum_k W[n, k] x[m, k]:
// each warpgroup owns 64 weight rows (the sparse A operand, 64 x 32 logical = 64 x 16 stored per
// k32 step) and the CTA's BM activation rows (the B operand, N = BM). The metadata is read from the
// mma layout (perfkern_sparse24_meta_to_mma), unchanged. Every map is a __host__ __device__ function so
// that a host emulation of the instruction can check them (tests/csrc/wgmma_layout_check.cu).
#ifndef PERFKERN_SPARSE24_WGMMA_LAYOUT_CUH_
#define PERFKERN_SPARSE24_WGMMA_LAYOUT_CUH_

#include <cstdint>

#include "sparse24/mma_layout.cuh"

namespace perfkern {
namespace sparse24 {
namespace wgmma {

using mma::kBlockRows;
using mma::kPadMeta;
using mma::kPadMetaWord;
using mma::kStepK;
using mma::LoadTask;
// The metadata region of a stage and its loads have the mma.sp kernel's shape (kMetaOffset, kSteps); a block
// past the padded weight rows is not in memory, and the kernel stores padding words there instead.
using mma::meta_load;
using mma::meta_smem_offset;

// Rows of the canonical swizzled layout are 128 bytes; 8 rows (1024 bytes) form one swizzle atom.
constexpr int kRowBytes = 128;
constexpr int kAtomBytes = 1024;
constexpr int kWarpgroupRows = 64;  // wgmma M

// BN weight rows (64 per consumer warpgroup) x BM activation rows per CTA; each pipeline stage holds
// BK = 128 logical K: a values tile of BN rows x 64 stored values (one 128-byte row each), an x tile
// of two 64-column K halves, each BM rows x 128 bytes, and the metadata words of BN/32 blocks x 4
// k32 steps. Stage bases are 1024-byte aligned so that the swizzle pattern is the hardware's.
template <int WARPGROUPS_, int BM_, int STAGES_>
struct TileConfig {
  static constexpr int kWarpgroups = WARPGROUPS_;
  static constexpr int BN = kWarpgroupRows * kWarpgroups;
  static constexpr int BM = BM_;
  static constexpr int BK = 128;
  static constexpr int kStages = STAGES_;
  static constexpr int kThreads = 128 * kWarpgroups;
  static constexpr int kSteps = BK / kStepK;  // k32 steps (wgmma instructions) per stage
  static constexpr int kAcc = BM / 2;         // fp32 accumulators per thread (m64nBM)

  static constexpr int kValBytes = BN * kRowBytes;
  static constexpr int kXHalfBytes = BM * kRowBytes;
  static constexpr int kMetaBytes = (BN / kBlockRows) * kSteps * 32 * 4;
  static constexpr int kValOffset = 0;
  static constexpr int kXOffset = kValBytes;
  static constexpr int kMetaOffset = kValBytes + 2 * kXHalfBytes;
  static constexpr int kStageBytes = (kMetaOffset + kMetaBytes + kAtomBytes - 1) / kAtomBytes * kAtomBytes;
  static constexpr int kPipeBytes = kStages * kStageBytes;

  // Epilogue: the output tile [BM][BN + 8] in the input dtype.
  static constexpr int kStgPitch = BN + 8;
  static constexpr int kStgBytes = BM * kStgPitch * 2;
  // One extra atom so that the kernel can align the dynamic shared memory base itself.
  static constexpr int kSmemBytes = (kPipeBytes > kStgBytes ? kPipeBytes : kStgBytes) + kAtomBytes;

  static_assert(BM % 8 == 0 && BM >= 8 && BM <= 256, "wgmma N is a multiple of 8 up to 256");
  static_assert(kStages >= 3, "two stages in flight besides the one the tensor cores read");
  static_assert(kValBytes % kAtomBytes == 0 && kXHalfBytes % kAtomBytes == 0, "tiles start on swizzle atoms");
};

// Byte offset of logical 16-byte chunk `chunk` (0..7) of row `row` in a 128-byte-swizzled tile whose
// base is 1024-byte aligned: the hardware XORs address bits [4, 7) with bits [7, 10).
__host__ __device__ __forceinline__ int sw128_offset(int row, int chunk) {
  return row * kRowBytes + ((chunk ^ (row & 7)) << 4);
}

// The values tile: chunk c of row r holds stored values 8c..8c+7 = logical K 16c..16c+15.
template <class Cfg>
__host__ __device__ __forceinline__ int val_smem_offset(int row, int chunk) {
  return Cfg::kValOffset + sw128_offset(row, chunk);
}

// The x tile: chunk c (0..15) of activation row r holds K columns 8c..8c+7; chunks 0..7 live in the
// first K half, 8..15 in the second.
template <class Cfg>
__host__ __device__ __forceinline__ int x_smem_offset(int row, int chunk) {
  return Cfg::kXOffset + (chunk >> 3) * Cfg::kXHalfBytes + sw128_offset(row, chunk & 7);
}

// ---- matrix descriptors ---------------------------------------------------------------------------

// A shared-memory matrix descriptor for a K-major operand in the 128-byte swizzle mode: start address
// (bits 0-13, in 16-byte units), leading-dimension byte offset (bits 16-29; unused by K-major swizzled
// layouts, set to 1), stride byte offset between 8-row groups (bits 32-45: 1024 bytes), base offset 0
// (atoms are 1024-byte aligned), layout type 1 = 128-byte swizzle (bits 62-63).
__host__ __device__ __forceinline__ uint64_t sw128_desc(uint32_t smem_byte_addr) {
  return static_cast<uint64_t>((smem_byte_addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(1) << 16) |
         (static_cast<uint64_t>(kAtomBytes >> 4) << 32) | (static_cast<uint64_t>(1) << 62);
}

// Byte offsets, within a stage, of the k32 step's operands for warpgroup `wg`. The sparse A operand
// is 64 rows x 16 stored values (32 bytes) at stored column 16*step; B is BM rows x 32 K columns
// (64 bytes) at K column 32*step, i.e. in K half step/2 at byte 64*(step%2). Moving the start address
// inside a swizzle row is how a K-major swizzled operand steps through K.
template <class Cfg>
__host__ __device__ __forceinline__ int a_desc_offset(int wg, int step) {
  return Cfg::kValOffset + wg * kWarpgroupRows * kRowBytes + 32 * step;
}

template <class Cfg>
__host__ __device__ __forceinline__ int b_desc_offset(int step) {
  return Cfg::kXOffset + (step >> 1) * Cfg::kXHalfBytes + 64 * (step & 1);
}

// ---- fragments ------------------------------------------------------------------------------------

// The metadata register of a thread for one k32 step, as a word of the stage's mma-layout metadata.
// wgmma.sp m64nNk32 (16-bit) with sparsity selector 0 reads, in warp w of the warpgroup, lanes
// 4g + h (h = 0, 1): rows 16w + g (low 16 bits) and 16w + g + 8 (high 16 bits) for K columns
// 16h..16h+15. Those rows sit in block 2*wg + w/2 of the mma layout, in the half of lanes (4g+2..4g+3
// for odd w) that mma.sp reads with selector 1, so every lane fetches word 4g + 2(w & 1) + (lane & 1).
// Lanes 4g+2, 4g+3 fetch the same word as 4g, 4g+1: both lane pairs hold the right metadata.
struct MetaSlot {
  int block;
  int word;
};

__host__ __device__ __forceinline__ MetaSlot meta_slot(int wg, int warp_in_wg, int lane) {
  MetaSlot s;
  s.block = 2 * wg + (warp_in_wg >> 1);
  s.word = 4 * (lane >> 2) + 2 * (warp_in_wg & 1) + (lane & 1);
  return s;
}

// Accumulator j (0 .. BM/2 - 1) of a thread in warp w of the warpgroup: weight row within the
// warpgroup's 64 and activation row within the CTA's BM. Same as four mma m16n8 C fragments per n8.
struct AccPos {
  int n;
  int m;
};

__host__ __device__ __forceinline__ AccPos acc_pos(int warp_in_wg, int lane, int j) {
  const int c = j & 3;
  AccPos p;
  p.n = 16 * warp_in_wg + (lane >> 2) + 8 * (c >> 1);
  p.m = 8 * (j >> 2) + 2 * (lane & 3) + (c & 1);
  return p;
}

// ---- global -> shared loads of one stage -----------------------------------------------------------

template <class Cfg>
struct StageLoads {
  static constexpr int kVal = Cfg::BN * 8;    // 16-byte chunks of values
  static constexpr int kX = Cfg::BM * 16;     // of x
  static constexpr int kMeta = (Cfg::BN / kBlockRows) * Cfg::kSteps * 8;
};

// Chunk v of the values tile of K tile kt: 8 stored values = 16 K columns of one weight row.
template <class Cfg>
__host__ __device__ __forceinline__ LoadTask values_load(int v, int64_t n0, int64_t kt, int64_t n, int64_t k,
                                                         int64_t row_stride) {
  const int row = v >> 3;
  const int chunk = v & 7;
  const int64_t kcol = kt * Cfg::BK + chunk * 16;
  LoadTask t;
  t.src = (n0 + row) * row_stride + kcol / 2;
  t.dst = val_smem_offset<Cfg>(row, chunk);
  t.valid = n0 + row < n && kcol < k;
  return t;
}

// Chunk v of the x tile of K tile kt: 8 consecutive K columns of one activation row.
template <class Cfg>
__host__ __device__ __forceinline__ LoadTask x_load(int v, int64_t m0, int64_t kt, int64_t m, int64_t k,
                                                    int64_t row_stride) {
  const int row = v >> 4;
  const int chunk = v & 15;
  const int64_t kcol = kt * Cfg::BK + chunk * 8;
  LoadTask t;
  t.src = (m0 + row) * row_stride + kcol;
  t.dst = x_smem_offset<Cfg>(row, chunk);
  t.valid = m0 + row < m && kcol < k;
  return t;
}

}  // namespace wgmma
}  // namespace sparse24
}  // namespace perfkern

#endif  // PERFKERN_SPARSE24_WGMMA_LAYOUT_CUH_
