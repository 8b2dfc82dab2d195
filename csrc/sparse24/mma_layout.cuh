// Layout of the 2:4 sparse tensor-core GEMM (mm.cu): the metadata layout written by
// perfkern_sparse24_meta_to_mma, the shared-memory tiles, and the lane maps of the fragments of
// mma.sp m16n8k32 (sparse weight x dense activations) and mma m16n8k16 (the low-rank term).
//
// The GEMM computes the transposed output tile, out^T[n, m] = sum_k W[n, k] x[m, k]: the 2:4 weight
// is the sparse A operand (row-major, 16 x 32 logical, 16 x 16 stored), x rows are the columns of
// the B operand. Every map from a lane to matrix coordinates lives here as a __host__ __device__
// function, so the warp-level data movement of the kernel can be emulated and checked on a host.
#ifndef PERFKERN_SPARSE24_MMA_LAYOUT_CUH_
#define PERFKERN_SPARSE24_MMA_LAYOUT_CUH_

#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

#include "common/kernel.cuh"

namespace perfkern {
namespace sparse24 {
namespace mma {

// A metadata block covers 32 weight rows (two m16 A tiles) and one k32 step: 32 words, one per lane.
constexpr int kBlockRows = 32;
constexpr int kStepK = 32;
// (0, 1) in all four groups: the word that padding rows carry (0b0000 is not a valid nibble).
constexpr uint32_t kPadMeta = 0x4444u;
// A metadata register holds two rows (g and g + 8 of an m16 tile): padding fills both halves.
constexpr uint32_t kPadMetaWord = kPadMeta | (kPadMeta << 16);

__host__ __device__ __forceinline__ int64_t meta_blocks(int64_t rows) { return (rows + kBlockRows - 1) / kBlockRows; }

// int16 elements of the mma-layout metadata for canonical meta [rows, meta_cols] (meta_cols even).
__host__ __device__ __forceinline__ int64_t meta_mma_size(int64_t rows, int64_t meta_cols) {
  return meta_blocks(rows) * kBlockRows * meta_cols;
}

// Word `lane` of block (b, s) packs canonical words of two rows, g and g + 8, of one m16 tile: lanes
// 4g, 4g+1 serve the tile of rows 32b..32b+15 (sparsity selector 0), lanes 4g+2, 4g+3 the tile of
// rows 32b+16..32b+31 (selector 1); the even lane of each pair holds K columns 32s..32s+15 (canonical
// column 2s), the odd lane 32s+16..32s+31 (canonical column 2s+1).
struct MetaWordSource {
  int64_t row_lo;  // low 16 bits
  int64_t row_hi;  // high 16 bits
  int64_t col;
};

__host__ __device__ __forceinline__ MetaWordSource meta_word_source(int64_t block, int64_t step, int lane) {
  const int g = lane >> 2;
  const int t = lane & 3;
  MetaWordSource s;
  s.row_lo = block * kBlockRows + 16 * (t >> 1) + g;
  s.row_hi = s.row_lo + 8;
  s.col = 2 * step + (t & 1);
  return s;
}

__host__ __device__ __forceinline__ uint32_t canonical_meta(const uint16_t* src, int64_t rows, int64_t meta_cols,
                                                           int64_t row, int64_t col) {
  if (row >= rows) {
    return kPadMeta;
  }
#if PERFKERN_ON_DEVICE
  return __ldg(src + row * meta_cols + col);
#else
  return src[row * meta_cols + col];
#endif
}

// Items of the converter: four consecutive words (16 bytes) each.
__host__ __device__ __forceinline__ int64_t meta_to_mma_items(int64_t rows, int64_t meta_cols) {
  return meta_blocks(rows) * (meta_cols / 2) * 8;
}

// dst must be 16-byte aligned; src is canonical, contiguous [rows, meta_cols].
__host__ __device__ __forceinline__ void meta_to_mma_item(const uint16_t* src, uint32_t* dst, int64_t rows,
                                                          int64_t meta_cols, int64_t item) {
  const int64_t steps = meta_cols / 2;
  const int64_t word0 = item * 4;
  const int64_t block_step = word0 >> 5;
  const int64_t block = block_step / steps;
  const int64_t step = block_step - block * steps;
  uint32_t w[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const MetaWordSource s = meta_word_source(block, step, static_cast<int>((word0 + j) & 31));
    w[j] = canonical_meta(src, rows, meta_cols, s.row_lo, s.col) |
           (canonical_meta(src, rows, meta_cols, s.row_hi, s.col) << 16);
  }
  const uint4 v = make_uint4(w[0], w[1], w[2], w[3]);
#if PERFKERN_ON_DEVICE
  *reinterpret_cast<uint4*>(dst + word0) = v;
#else
  memcpy(dst + word0, &v, sizeof(v));
#endif
}

// ---- CTA tiling ------------------------------------------------------------------------------------

// BN weight rows (output columns) x BM activation rows (output rows) per CTA, BK of K per pipeline
// stage. Warps: WARPS_N x WARPS_M tiles of 32 weight rows x BM/WARPS_M activation rows, times
// WARPS_K warps that split the k32 steps of a stage between them (their sums meet in the epilogue).
template <int BN_, int BM_, int BK_, int WARPS_N_, int WARPS_M_, int WARPS_K_, int STAGES_>
struct TileConfig {
  static constexpr int BN = BN_;
  static constexpr int BM = BM_;
  static constexpr int BK = BK_;
  static constexpr int kWarpsN = WARPS_N_;
  static constexpr int kWarpsM = WARPS_M_;
  static constexpr int kWarpsK = WARPS_K_;
  static constexpr int kStages = STAGES_;
  static constexpr int kThreads = 32 * kWarpsN * kWarpsM * kWarpsK;
  static constexpr int kSteps = BK / kStepK;   // k32 steps per stage
  static constexpr int kWarpM = BM / kWarpsM;  // activation rows per warp
  static constexpr int kMI = kWarpM / 8;       // n8 tiles per warp
  static constexpr int kAcc = 2 * kMI * 4;     // fp32 accumulators per lane

  // Shared memory of one stage: values [BN][BK/2], x [BM][BK], metadata [BN/32][kSteps][32] words.
  static constexpr int kValChunks = BK / 16;  // 16-byte chunks per values row
  static constexpr int kXChunks = BK / 8;     // 16-byte chunks per x row
  static constexpr int kValBytes = BN * kValChunks * 16;
  static constexpr int kXBytes = BM * kXChunks * 16;
  static constexpr int kMetaBytes = (BN / kBlockRows) * kSteps * 32 * 4;
  static constexpr int kValOffset = 0;
  static constexpr int kXOffset = kValBytes;
  static constexpr int kMetaOffset = kValBytes + kXBytes;
  static constexpr int kStageBytes = kValBytes + kXBytes + kMetaBytes;
  static constexpr int kPipeBytes = kStages * kStageBytes;

  // Epilogue: partial sums of the WARPS_K - 1 helper warps, then the output tile [BM][BN + 8].
  static constexpr int kRedBytes = (kWarpsK - 1) * kWarpsN * kWarpsM * kAcc * 32 * 4;
  static constexpr int kStgPitch = BN + 8;
  static constexpr int kStgBytes = BM * kStgPitch * 2;
  static constexpr int kEpiBytes = kRedBytes + kStgBytes;
  static constexpr int kSmemBytes = kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes;

  static_assert(BN == kBlockRows * kWarpsN, "one warp per 32 weight rows");
  static_assert(BK % kStepK == 0 && kSteps % kWarpsK == 0, "k32 steps split evenly between the K warps");
  static_assert(kWarpM % 8 == 0 && kWarpM * kWarpsM == BM, "warp M tile is a multiple of 8");
  static_assert(kValChunks == 4 || kValChunks == 8 || kValChunks == 16, "values rows of 64, 128 or 256 bytes");
  static_assert(kXChunks == 8 || kXChunks == 16, "x rows of 128 or 256 bytes");
  static_assert(kStages >= 2, "at least double buffering");
};

// The tilings the launcher picks from, by M: decode (M <= 16) splits each 128-wide K stage between 4
// warps so that N/32 CTAs stream the weight; M <= 32 uses 64-row weight tiles and 2 K warps; larger M
// uses 128 x 64 tiles, 8 warps of 32 x 32, 3 stages.
using DecodeTiles = TileConfig<32, 16, 128, 1, 1, 4, 4>;
using SmallTiles = TileConfig<64, 32, 64, 2, 1, 2, 4>;
using LargeTiles = TileConfig<128, 64, 64, 4, 2, 1, 3>;

// Physical 16-byte chunk of logical chunk `chunk` in row `row`. ldmatrix reads one chunk from each of
// 8 consecutive rows; the XOR puts those 8 chunks in 8 distinct bank groups.
__host__ __device__ __forceinline__ int swizzle_chunk(int row, int chunk, int chunks_per_row) {
  return chunks_per_row >= 8 ? (chunk ^ (row & 7)) : (chunk ^ ((row >> 1) & 3));
}

template <class Cfg>
__host__ __device__ __forceinline__ int val_smem_offset(int row, int chunk) {
  return Cfg::kValOffset + (row * Cfg::kValChunks + swizzle_chunk(row, chunk, Cfg::kValChunks)) * 16;
}

template <class Cfg>
__host__ __device__ __forceinline__ int x_smem_offset(int row, int chunk) {
  return Cfg::kXOffset + (row * Cfg::kXChunks + swizzle_chunk(row, chunk, Cfg::kXChunks)) * 16;
}

// Byte offset of word 0 of metadata block (block within the CTA, k32 step within the stage).
template <class Cfg>
__host__ __device__ __forceinline__ int meta_smem_offset(int block, int step) {
  return Cfg::kMetaOffset + (block * Cfg::kSteps + step) * 32 * 4;
}

struct WarpCoord {
  int n;   // 32-row weight block of the CTA
  int m;   // activation-row slice
  int k;   // which share of the k32 steps
  int nm;  // n + kWarpsN * m
};

template <class Cfg>
__host__ __device__ __forceinline__ WarpCoord warp_coord(int warp) {
  WarpCoord w;
  w.nm = warp % (Cfg::kWarpsN * Cfg::kWarpsM);
  w.k = warp / (Cfg::kWarpsN * Cfg::kWarpsM);
  w.n = w.nm % Cfg::kWarpsN;
  w.m = w.nm / Cfg::kWarpsN;
  return w;
}

// Grouped rasterisation: CTAs walk kGroupM activation tiles for one weight tile before moving on,
// so consecutive CTAs share weight tiles and a group's activation tiles in L2.
constexpr int64_t kGroupM = 8;

struct TileCoord {
  int64_t n;
  int64_t m;
};

__host__ __device__ __forceinline__ TileCoord tile_coord(int64_t tile, int64_t tiles_n, int64_t tiles_m) {
  const int64_t group_tiles = kGroupM * tiles_n;
  const int64_t group = tile / group_tiles;
  const int64_t first_m = group * kGroupM;
  const int64_t left = tiles_m - first_m;
  const int64_t rows = left < kGroupM ? left : kGroupM;
  const int64_t in_group = tile - group * group_tiles;
  TileCoord c;
  c.n = in_group / rows;
  c.m = first_m + in_group % rows;
  return c;
}

// ---- global -> shared loads of one stage -----------------------------------------------------------

// One 16-byte copy: element / word offset in global memory, byte offset in the stage, and whether the
// source exists (otherwise the chunk is zero-filled or skipped).
struct LoadTask {
  int64_t src;
  int dst;
  bool valid;
};

template <class Cfg>
struct StageLoads {
  static constexpr int kVal = Cfg::BN * Cfg::kValChunks;
  static constexpr int kX = Cfg::BM * Cfg::kXChunks;
  static constexpr int kMeta = (Cfg::BN / kBlockRows) * Cfg::kSteps * 8;
};

// Chunk v of the values tile of K tile kt: 8 stored values = 16 K columns of one weight row.
template <class Cfg>
__host__ __device__ __forceinline__ LoadTask values_load(int v, int64_t n0, int64_t kt, int64_t n, int64_t k,
                                                         int64_t row_stride) {
  const int row = v / Cfg::kValChunks;
  const int chunk = v % Cfg::kValChunks;
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
  const int row = v / Cfg::kXChunks;
  const int chunk = v % Cfg::kXChunks;
  const int64_t kcol = kt * Cfg::BK + chunk * 8;
  LoadTask t;
  t.src = (m0 + row) * row_stride + kcol;
  t.dst = x_smem_offset<Cfg>(row, chunk);
  t.valid = m0 + row < m && kcol < k;
  return t;
}

// Chunk v (4 words) of the metadata of K tile kt; src counts 32-bit words. Blocks past the padded
// weight rows and steps past K are not loaded: no warp issues an mma for them.
template <class Cfg>
__host__ __device__ __forceinline__ LoadTask meta_load(int v, int64_t n0, int64_t kt, int64_t n, int64_t k) {
  const int block = v / (Cfg::kSteps * 8);
  const int rest = v % (Cfg::kSteps * 8);
  const int step = rest / 8;
  const int quarter = rest % 8;
  const int64_t gblock = n0 / kBlockRows + block;
  const int64_t gstep = kt * Cfg::kSteps + step;
  const int64_t steps = k / kStepK;
  LoadTask t;
  t.src = (gblock * steps + gstep) * 32 + quarter * 4;
  t.dst = meta_smem_offset<Cfg>(block, step) + quarter * 16;
  t.valid = gblock * kBlockRows < n && gstep < steps;
  return t;
}

// ---- fragments -------------------------------------------------------------------------------------

struct SmemPos {
  int row;
  int chunk;  // logical 16-byte chunk
};

// Row address that `lane` gives ldmatrix.x4 for the sparse A operand of one k32 step: 16 weight rows
// from row0 x 16 stored values (32 K). Matrix j = lane / 8 is rows +8*(j&1), stored values +8*(j>>1),
// so ldmatrix's register j is A fragment register j.
__host__ __device__ __forceinline__ SmemPos a_ldmatrix_src(int lane, int row0, int step) {
  const int j = lane >> 3;
  SmemPos p;
  p.row = row0 + (lane & 7) + 8 * (j & 1);
  p.chunk = 2 * step + (j >> 1);
  return p;
}

// Row address that `lane` gives ldmatrix.x4 for the B operand of one k32 step: 8 activation rows from
// row0 x 32 K. Matrix j holds K columns 8j..8j+7, which is B fragment register j.
__host__ __device__ __forceinline__ SmemPos b_ldmatrix_src(int lane, int row0, int step) {
  SmemPos p;
  p.row = row0 + (lane & 7);
  p.chunk = 4 * step + (lane >> 3);
  return p;
}

// Accumulator c (0..3) of a 16 x 8 tile: weight row and activation row within the tile.
struct AccPos {
  int n;
  int m;
};

__host__ __device__ __forceinline__ AccPos acc_pos(int lane, int c) {
  AccPos p;
  p.n = (lane >> 2) + 8 * (c >> 1);
  p.m = 2 * (lane & 3) + (c & 1);
  return p;
}

// Element e (0..7; register e / 2, low half first) of the dense m16n8k16 A fragment: B_lora [16 x 16].
struct DensePos {
  int row;
  int col;
};

__host__ __device__ __forceinline__ DensePos dense_a_pos(int lane, int e) {
  const int reg = e >> 1;
  DensePos p;
  p.row = (lane >> 2) + 8 * (reg & 1);
  p.col = 2 * (lane & 3) + (e & 1) + 8 * (reg >> 1);
  return p;
}

// Element e (0..3) of the dense m16n8k16 B fragment, as (activation row, rank index) of T [8 x 16].
__host__ __device__ __forceinline__ DensePos dense_b_pos(int lane, int e) {
  const int reg = e >> 1;
  DensePos p;
  p.row = lane >> 2;
  p.col = 2 * (lane & 3) + (e & 1) + 8 * reg;
  return p;
}

// Chunk v of the output tile store: 8 consecutive output columns of one output row.
template <class Cfg>
__host__ __device__ __forceinline__ SmemPos out_store_chunk(int v) {
  SmemPos p;
  p.row = v / (Cfg::BN / 8);
  p.chunk = v % (Cfg::BN / 8);
  return p;
}

}  // namespace mma
}  // namespace sparse24
}  // namespace perfkern

#endif  // PERFKERN_SPARSE24_MMA_LAYOUT_CUH_
