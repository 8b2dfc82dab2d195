// Building blocks of the 2:4 kernels.
//
// Every kernel works on "chunks": 16 consecutive columns of one row, i.e. 4 groups of 4, which is
// exactly one int16 metadata word, 8 packed values and 16 dense entries, moved with 16-byte vector
// accesses where alignment allows. The selection and packing work on raw element bits (no
// floating-point arithmetic at all, so results are bit-exact by construction). The per-item
// functions (one chunk, loads and stores included) are __host__ __device__, so they can be run and
// checked on a machine without a GPU; the kernels are grid-stride loops over them.
#ifndef PERFKERN_SPARSE24_SPARSE24_CUH_
#define PERFKERN_SPARSE24_SPARSE24_CUH_

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/kernel.cuh"

namespace perfkern {
namespace sparse24 {

constexpr int kChunkCols = 16;
constexpr int kChunkValues = 8;
constexpr int kThreads = 256;

// Raw-bit view of an element type. For IEEE formats, |x| orders like the unsigned integer
// (bits & kAbsMask); every NaN has a larger such integer than infinity, so min(abs_bits, kInfBits)
// is the magnitude with NaN mapped to +inf.
template <typename T>
struct ElemBits;

template <>
struct ElemBits<float> {
  using Bits = uint32_t;
  static constexpr uint32_t kAbsMask = 0x7fffffffu;
  static constexpr uint32_t kInfBits = 0x7f800000u;
};

template <>
struct ElemBits<__half> {
  using Bits = uint16_t;
  static constexpr uint32_t kAbsMask = 0x7fffu;
  static constexpr uint32_t kInfBits = 0x7c00u;
};

template <>
struct ElemBits<__nv_bfloat16> {
  using Bits = uint16_t;
  static constexpr uint32_t kAbsMask = 0x7fffu;
  static constexpr uint32_t kInfBits = 0x7f80u;
};

template <typename Bits>
__host__ __device__ __forceinline__ Bits pick4(const Bits* q, uint32_t idx) {
  return (idx & 2u) ? ((idx & 1u) ? q[3] : q[2]) : ((idx & 1u) ? q[1] : q[0]);
}

// Bit j set iff entry j of the group is one of the two kept ones.
template <typename T>
__host__ __device__ __forceinline__ uint32_t keep_mask4(const typename ElemBits<T>::Bits* q) {
  using E = ElemBits<T>;
  uint32_t m[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t a = static_cast<uint32_t>(q[j]) & E::kAbsMask;
    m[j] = a < E::kInfBits ? a : E::kInfBits;
  }
  // For i < j, i outranks j iff m_i >= m_j (ties go to the lower index).
  const uint32_t b01 = m[0] >= m[1], b02 = m[0] >= m[2], b03 = m[0] >= m[3];
  const uint32_t b12 = m[1] >= m[2], b13 = m[1] >= m[3], b23 = m[2] >= m[3];
  const uint32_t r0 = (b01 ^ 1u) + (b02 ^ 1u) + (b03 ^ 1u);
  const uint32_t r1 = b01 + (b12 ^ 1u) + (b13 ^ 1u);
  const uint32_t r2 = b02 + b12 + (b23 ^ 1u);
  const uint32_t r3 = b03 + b13 + b23;
  return static_cast<uint32_t>(r0 < 2) | (static_cast<uint32_t>(r1 < 2) << 1) |
         (static_cast<uint32_t>(r2 < 2) << 2) | (static_cast<uint32_t>(r3 < 2) << 3);
}

// kept has exactly two bits set.
__host__ __device__ __forceinline__ uint32_t low_index(uint32_t kept) {
  return (kept & 1u) ? 0u : ((kept & 2u) ? 1u : 2u);
}
__host__ __device__ __forceinline__ uint32_t high_index(uint32_t kept) {
  return (kept & 8u) ? 3u : ((kept & 4u) ? 2u : 1u);
}

// One chunk of compress: x[16] -> values[8], the metadata word, and the 0/1 mask bytes packed into
// four little-endian words (byte j of mask[g] is entry j of group g).
template <typename T>
__host__ __device__ __forceinline__ void compress_chunk(const typename ElemBits<T>::Bits (&x)[kChunkCols],
                                                        typename ElemBits<T>::Bits (&values)[kChunkValues],
                                                        uint32_t& meta, uint32_t (&mask)[4]) {
  using E = ElemBits<T>;
  using Bits = typename E::Bits;
  meta = 0;
#pragma unroll
  for (int g = 0; g < 4; ++g) {
    const Bits* q = x + 4 * g;
    const uint32_t kept = keep_mask4<T>(q);
    const uint32_t i0 = low_index(kept);
    const uint32_t i1 = high_index(kept);
    meta |= (i0 | (i1 << 2)) << (4 * g);
    const Bits v0 = pick4(q, i0);
    const Bits v1 = pick4(q, i1);
    values[2 * g] = (static_cast<uint32_t>(v0) & E::kAbsMask) ? v0 : Bits(0);
    values[2 * g + 1] = (static_cast<uint32_t>(v1) & E::kAbsMask) ? v1 : Bits(0);
    mask[g] = (kept & 1u) | ((kept & 2u) << 7) | ((kept & 4u) << 14) | ((kept & 8u) << 21);
  }
}

// One chunk of decompress: position p of group g gets v1 if p == idx1, else v0 if p == idx0, else 0.
template <typename Bits>
__host__ __device__ __forceinline__ void decompress_chunk(uint32_t meta, const Bits (&values)[kChunkValues],
                                                          Bits (&dense)[kChunkCols]) {
#pragma unroll
  for (int g = 0; g < 4; ++g) {
    const uint32_t nib = (meta >> (4 * g)) & 0xfu;
    const uint32_t i0 = nib & 3u;
    const uint32_t i1 = (nib >> 2) & 3u;
#pragma unroll
    for (uint32_t p = 0; p < 4; ++p) {
      dense[4 * g + p] = p == i1 ? values[2 * g + 1] : (p == i0 ? values[2 * g] : Bits(0));
    }
  }
}

// One chunk of gather: the entries of dense that meta names, in column order.
template <typename Bits>
__host__ __device__ __forceinline__ void gather_chunk(uint32_t meta, const Bits (&dense)[kChunkCols],
                                                      Bits (&values)[kChunkValues]) {
#pragma unroll
  for (int g = 0; g < 4; ++g) {
    const uint32_t nib = (meta >> (4 * g)) & 0xfu;
    values[2 * g] = pick4(dense + 4 * g, nib & 3u);
    values[2 * g + 1] = pick4(dense + 4 * g, (nib >> 2) & 3u);
  }
}

// Loads / stores of N elements at p. With vec, p must be 16-byte aligned and N * sizeof(Bits) a
// multiple of 16; otherwise elements are accessed one by one. (Host builds of these helpers exist
// so that the item functions below can be called directly on a host.)
template <typename Bits, int N>
__host__ __device__ __forceinline__ void load_elems(const Bits* __restrict__ p, bool vec, Bits (&out)[N]) {
  static_assert((N * sizeof(Bits)) % 16 == 0, "chunk must be a whole number of 16-byte vectors");
  constexpr int kVecs = static_cast<int>(N * sizeof(Bits) / 16);
  constexpr int kPerVec = static_cast<int>(16 / sizeof(Bits));
  if (vec) {
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
#if PERFKERN_ON_DEVICE
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(p) + k);
#else
      uint4 w;
      memcpy(&w, p + k * kPerVec, 16);
#endif
      memcpy(&out[k * kPerVec], &w, 16);
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      out[k] = p[k];
    }
  }
}

template <typename Bits, int N>
__host__ __device__ __forceinline__ void store_elems(Bits* __restrict__ p, bool vec, const Bits (&in)[N]) {
  static_assert((N * sizeof(Bits)) % 16 == 0, "chunk must be a whole number of 16-byte vectors");
  constexpr int kVecs = static_cast<int>(N * sizeof(Bits) / 16);
  constexpr int kPerVec = static_cast<int>(16 / sizeof(Bits));
  if (vec) {
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      uint4 w;
      memcpy(&w, &in[k * kPerVec], 16);
#if PERFKERN_ON_DEVICE
      reinterpret_cast<uint4*>(p)[k] = w;
#else
      memcpy(p + k * kPerVec, &w, 16);
#endif
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      p[k] = in[k];
    }
  }
}

// Walks items first, first + step, ... below total, where item i is chunk i % chunks_per_row of row
// i / chunks_per_row (row-major, so consecutive threads touch consecutive chunks of a row). Only two
// 64-bit divisions per walker.
template <typename F>
__host__ __device__ __forceinline__ void walk_chunks(int64_t first, int64_t step, int64_t rows,
                                                     int64_t chunks_per_row, F&& body) {
  const int64_t total = rows * chunks_per_row;
  if (first >= total) {
    return;
  }
  const int64_t step_rows = step / chunks_per_row;
  const int64_t step_chunks = step - step_rows * chunks_per_row;
  int64_t row = first / chunks_per_row;
  int64_t chunk = first - row * chunks_per_row;
  for (int64_t i = first; i < total; i += step) {
    body(row, chunk);
    row += step_rows;
    chunk += step_chunks;
    if (chunk >= chunks_per_row) {
      chunk -= chunks_per_row;
      ++row;
    }
  }
}

#if PERFKERN_DEVICE_CODE
// Grid-stride walk of the calling thread.
template <typename F>
__device__ __forceinline__ void for_each_chunk(int64_t rows, int64_t chunks_per_row, F&& body) {
  walk_chunks(static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
              static_cast<int64_t>(gridDim.x) * blockDim.x, rows, chunks_per_row, body);
}
#endif

// ---- compress -------------------------------------------------------------------------------------

template <typename Bits>
struct CompressArgs {
  const Bits* src;
  Bits* values;
  int16_t* meta;
  uint8_t* mask;
  int64_t rows;
  int64_t chunks_per_row;
  int64_t src_row_stride;
  int64_t values_row_stride;
  int64_t meta_row_stride;
  int64_t mask_row_stride;
  bool src_vec;
  bool values_vec;
  bool mask_vec;
};

template <typename T>
__host__ __device__ __forceinline__ void compress_item(const CompressArgs<typename ElemBits<T>::Bits>& a,
                                                       int64_t row, int64_t chunk) {
  using Bits = typename ElemBits<T>::Bits;
  Bits x[kChunkCols];
  load_elems(a.src + row * a.src_row_stride + chunk * kChunkCols, a.src_vec, x);
  Bits vals[kChunkValues];
  uint32_t meta;
  uint32_t mask[4];
  compress_chunk<T>(x, vals, meta, mask);
  if (a.values != nullptr) {
    store_elems(a.values + row * a.values_row_stride + chunk * kChunkValues, a.values_vec, vals);
  }
  if (a.meta != nullptr) {
    a.meta[row * a.meta_row_stride + chunk] = static_cast<int16_t>(static_cast<uint16_t>(meta));
  }
  if (a.mask != nullptr) {
    uint8_t* m = a.mask + row * a.mask_row_stride + chunk * kChunkCols;
    if (a.mask_vec) {
      const uint4 w = make_uint4(mask[0], mask[1], mask[2], mask[3]);
#if PERFKERN_ON_DEVICE
      *reinterpret_cast<uint4*>(m) = w;
#else
      memcpy(m, &w, 16);
#endif
    } else {
#pragma unroll
      for (int k = 0; k < kChunkCols; ++k) {
        m[k] = static_cast<uint8_t>((mask[k / 4] >> (8 * (k % 4))) & 1u);
      }
    }
  }
}

// ---- decompress -----------------------------------------------------------------------------------

template <typename Bits>
struct DecompressArgs {
  const Bits* values;
  const int16_t* meta;
  Bits* dense;
  int64_t rows;
  int64_t chunks_per_row;
  int64_t values_row_stride;
  int64_t meta_row_stride;
  int64_t dense_row_stride;
  bool values_vec;
  bool dense_vec;
};

__host__ __device__ __forceinline__ uint32_t load_meta(const int16_t* p) {
#if PERFKERN_ON_DEVICE
  return static_cast<uint16_t>(__ldg(p));
#else
  return static_cast<uint16_t>(*p);
#endif
}

template <typename Bits>
__host__ __device__ __forceinline__ void decompress_item(const DecompressArgs<Bits>& a, int64_t row, int64_t chunk) {
  const uint32_t meta = load_meta(a.meta + row * a.meta_row_stride + chunk);
  Bits vals[kChunkValues];
  load_elems(a.values + row * a.values_row_stride + chunk * kChunkValues, a.values_vec, vals);
  Bits dense[kChunkCols];
  decompress_chunk(meta, vals, dense);
  store_elems(a.dense + row * a.dense_row_stride + chunk * kChunkCols, a.dense_vec, dense);
}

// ---- gather ---------------------------------------------------------------------------------------

template <typename Bits>
struct GatherArgs {
  const Bits* dense;
  const int16_t* meta;
  Bits* values;
  int64_t rows;
  int64_t chunks_per_row;
  int64_t dense_row_stride;
  int64_t meta_row_stride;
  int64_t values_row_stride;
  bool dense_vec;
  bool values_vec;
};

template <typename Bits>
__host__ __device__ __forceinline__ void gather_item(const GatherArgs<Bits>& a, int64_t row, int64_t chunk) {
  const uint32_t meta = load_meta(a.meta + row * a.meta_row_stride + chunk);
  const Bits* d = a.dense + row * a.dense_row_stride + chunk * kChunkCols;
  Bits vals[kChunkValues];
  if (a.dense_vec) {
    Bits dense[kChunkCols];
    load_elems(d, true, dense);
    gather_chunk(meta, dense, vals);
  } else {
    // Only the two named entries of each group are read.
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      const uint32_t nib = (meta >> (4 * g)) & 0xfu;
      vals[2 * g] = d[4 * g + (nib & 3u)];
      vals[2 * g + 1] = d[4 * g + ((nib >> 2) & 3u)];
    }
  }
  store_elems(a.values + row * a.values_row_stride + chunk * kChunkValues, a.values_vec, vals);
}

// ---- meta reorder ---------------------------------------------------------------------------------
//
// Canonical (r, c) goes to row d = perm(r) = (r/32)*32 + (r%8)*4 + (r%32)/8, column c, then each 2x2
// block (rows 2k, 2k+1; columns 2q, 2q+1) is transposed, and element (d', c') is stored at
// (c'/2) * rows * 2 + d' * 2 + c' % 2. With r = 32*blk + 8*a + b (a < 4, b < 8), d = 32*blk + 4*b + a,
// so the canonical rows 32*blk + b + {0, 8, 16, 24} at columns {2q, 2q+1} fill exactly the 8
// consecutive int16 at q * rows * 2 + (32*blk + 4*b) * 2: entry a, column 2q+k lands at position
// 4*(a/2) + 2*k + a%2. One item moves such an 8-element block.

struct MetaReorderArgs {
  const int16_t* src;
  int16_t* dst;
  int64_t rows;
  int64_t meta_cols;
  bool to_cutlass;
  bool canonical_vec;  // canonical side 4-byte aligned: column pairs move as one 32-bit word
  bool cutlass_vec;    // CUTLASS side 16-byte aligned: the 8-element block moves as one uint4
};

__host__ __device__ __forceinline__ int64_t meta_reorder_items(int64_t rows, int64_t meta_cols) {
  return (rows / 4) * (meta_cols / 2);
}

__host__ __device__ __forceinline__ void meta_reorder_item(const MetaReorderArgs& a, int64_t item) {
  const int64_t b = item & 7;
  const int64_t rest = item >> 3;
  const int64_t blocks32 = a.rows / 32;
  const int64_t q = rest / blocks32;
  const int64_t blk = rest - q * blocks32;
  const int64_t canonical_base = (blk * 32 + b) * a.meta_cols + 2 * q;
  const int64_t cutlass_base = q * a.rows * 2 + (blk * 32 + 4 * b) * 2;
  uint16_t block[8];
  if (a.to_cutlass) {
    const uint16_t* src = reinterpret_cast<const uint16_t*>(a.src);
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const uint16_t* p = src + canonical_base + 8 * s * a.meta_cols;
      uint16_t lo;
      uint16_t hi;
      if (a.canonical_vec) {
#if PERFKERN_ON_DEVICE
        const uint32_t w = __ldg(reinterpret_cast<const unsigned int*>(p));
#else
        uint32_t w;
        memcpy(&w, p, 4);
#endif
        lo = static_cast<uint16_t>(w & 0xffffu);
        hi = static_cast<uint16_t>(w >> 16);
      } else {
        lo = p[0];
        hi = p[1];
      }
      block[4 * (s / 2) + (s % 2)] = lo;
      block[4 * (s / 2) + 2 + (s % 2)] = hi;
    }
    store_elems(reinterpret_cast<uint16_t*>(a.dst) + cutlass_base, a.cutlass_vec, block);
  } else {
    load_elems(reinterpret_cast<const uint16_t*>(a.src) + cutlass_base, a.cutlass_vec, block);
    uint16_t* dst = reinterpret_cast<uint16_t*>(a.dst);
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      uint16_t* p = dst + canonical_base + 8 * s * a.meta_cols;
      const uint16_t lo = block[4 * (s / 2) + (s % 2)];
      const uint16_t hi = block[4 * (s / 2) + 2 + (s % 2)];
      if (a.canonical_vec) {
        const uint32_t w = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
#if PERFKERN_ON_DEVICE
        *reinterpret_cast<uint32_t*>(p) = w;
#else
        memcpy(p, &w, 4);
#endif
      } else {
        p[0] = lo;
        p[1] = hi;
      }
    }
  }
}

}  // namespace sparse24
}  // namespace perfkern

#endif  // PERFKERN_SPARSE24_SPARSE24_CUH_
