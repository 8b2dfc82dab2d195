// PERA, polynomial-expanded LoRA (DESIGN §3.4; PERA, arXiv 2604.11841), on the tile GEMM of common/tile_gemm.cuh.
//
// With rows a_i of A [r, K], columns b_i of B [N, r] and the pairs of the mode, the expanded factors have
// r' = r + |P| rows (columns), indexed by q: Â[q] = a_q, B̂[:, q] = b_q for q < r, and for pair p = q - r = (i, j)
//   Â[q] = h_p a_i (.) a_j        B̂[:, q] = b_i (.) b_j
// Every kernel generates the Â / B̂ elements it needs from A, B and h as its operand tiles are filled (8 at a
// time, from two gathered rows of A, or two gathered entries of a row of B), so the expanded factors never touch
// memory. Each CTA first decodes the pairs into a table in shared memory (i | j << 8 per q).
//
//   forward   Z = x . Â^T              z_kernel      (reads x once)
//             out (+)= s Z . B̂^T       out_kernel    (writes out once)
//   merge     ΔW = s B̂ . Â              delta_kernel
//   backward  dZ = s G . B̂             dz_kernel
//             dB̂ = s G^T . Z -> dB     db_kernel     (per split of M, every chunk of r' in turn folded into dB)
//             dÂ = dZ^T . x -> dA, dh  da_kernel     (same, folded into dA and dh)
//             dx = dZ . Â              dx_kernel
//             the splits' partials summed in split order (reduce_kernel): deterministic, no atomics.
#ifndef PERFKERN_PERA_PERA_CUH_
#define PERFKERN_PERA_PERA_CUH_

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/cuda_internal.h"
#include "common/kernel.cuh"
#include "common/tile_gemm.cuh"
#include "perfkern/perfkern.h"

namespace perfkern {
namespace pera {

constexpr int kMaxRank = 128;
// Every kernel's output tile is 64 x 64 (tile::Shape16 / Shape32), its reduction blocks 32 deep.
constexpr int kTile = 64;
constexpr int kBlockK = 32;

// |P| of rank r in mode.
__host__ __device__ inline int64_t num_pairs(int64_t r, perfkern_pera_mode_t mode) {
  return mode == PERFKERN_PERA_FULL ? r * (r + 1) / 2 : mode == PERFKERN_PERA_SQUARE ? r : r * (r - 1) / 2;
}

// The pair p (row-major upper-triangle order) of the mode: (i, j), i <= j (FULL), i = j (SQUARE), i < j (CROSS).
__host__ __device__ inline void pair_of(int p, int r, perfkern_pera_mode_t mode, int& i, int& j) {
  if (mode == PERFKERN_PERA_SQUARE) {
    i = j = p;
    return;
  }
  // Row i of the triangle starts at start(i) = i (2r' - i + 1) / 2 with r' = r (FULL) or r - 1 (CROSS): invert
  // the quadratic, then step to the exact row.
  const int w = mode == PERFKERN_PERA_FULL ? r : r - 1;
  auto start = [w](int row) { return row * (2 * w - row + 1) / 2; };
  const float b = 2.0f * static_cast<float>(w) + 1.0f;
  int row = static_cast<int>((b - sqrtf(b * b - 8.0f * static_cast<float>(p))) * 0.5f);
  row = row < 0 ? 0 : (row > w - 1 ? w - 1 : row);
  while (row + 1 < w && start(row + 1) <= p) {
    ++row;
  }
  while (row > 0 && start(row) > p) {
    --row;
  }
  i = row;
  j = row + (p - start(row)) + (mode == PERFKERN_PERA_CROSS ? 1 : 0);
}

template <typename T>
struct Args {
  tile::Matrix<T> x;     // [m, k]
  tile::Matrix<T> a;     // [r, k]
  tile::Matrix<T> b;     // [n, r]
  tile::Matrix<T> g;     // [m, n], the upstream gradient
  tile::Matrix<float> z; // [m, r']
  tile::Matrix<T> dz;    // [m, r'], s G . B̂ rounded to T (every consumer rounds it so)
  const void* h;
  float* z_out;
  void* dz_out;
  void* out;
  void* dx;
  float* part_a;  // [splits_a][r][k]
  float* part_b;  // [splits_b][n][r]
  float* part_h;  // [k_tiles * splits_a][|P|]
  int64_t out_row_stride;
  int64_t dx_row_stride;
  int64_t m;
  int64_t n;
  int64_t k;
  int r;
  int rh;  // r'
  float scale;
  bool accumulate;
  bool want_h;
  perfkern_pera_mode_t mode;
  int64_t splits_a;
  int64_t rows_a;
  int64_t splits_b;
  int64_t rows_b;
};

// What the backward computes: each output may be skipped; Z is recomputed into a.z_out when asked.
struct BackwardWork {
  bool recompute_z;
  bool dz;
  bool dx;
  bool db;
  bool da;
  void* d_a;
  void* d_b;
  void* d_h;
  int64_t d_a_row_stride;
  int64_t d_b_row_stride;
  int device;
};

#if PERFKERN_DEVICE_CODE

// Decodes (i_q, j_q) for every q < r' into table (shared memory), then a barrier.
__device__ __forceinline__ void build_pairs(uint16_t* table, int r, int rh, perfkern_pera_mode_t mode) {
  for (int q = static_cast<int>(threadIdx.x); q < rh; q += static_cast<int>(blockDim.x)) {
    int i = q;
    int j = q;
    if (q >= r) {
      pair_of(q - r, r, mode, i, j);
    }
    table[q] = static_cast<uint16_t>(i | (j << 8));
  }
  __syncthreads();
}

// The factors and the pair table, as the operands generate from them.
template <typename T>
struct Factors {
  tile::Matrix<T> a;
  tile::Matrix<T> b;
  const void* h;
  const uint16_t* pairs;
  int r;
  int rh;

  // Â[q, k .. k + 7] (zero at q >= r' and past K).
  __device__ __forceinline__ void a_hat8(int64_t q, int64_t k, float (&v)[8]) const {
    const int64_t row = q < rh ? static_cast<int64_t>(pairs[q] & 0xffu) : a.rows;
    tile::load_row8(a, row, k, a.cols, v);
    if (q < r || q >= rh) {
      return;
    }
    float aj[8];
    tile::load_row8(a, static_cast<int64_t>(pairs[q] >> 8), k, a.cols, aj);
    const float c = tile::load_elem<T>(h, q - r);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      v[e] = c * v[e] * aj[e];
    }
  }

  // B̂[n, q .. q + 7] (zero at q >= r' and past N): gathered from row n of B, which stays in L1.
  __device__ __forceinline__ void b_hat8(int64_t n, int64_t q, float (&v)[8]) const {
    const char* row = static_cast<const char*>(b.ptr) + static_cast<int64_t>(sizeof(T)) * n * b.row_stride;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int64_t qq = q + e;
      v[e] = 0.0f;
      if (n < b.rows && qq < rh) {
        const uint16_t ij = pairs[qq];
        v[e] = tile::load_elem<T>(row, ij & 0xffu);
        if (qq >= r) {
          v[e] *= tile::load_elem<T>(row, ij >> 8);
        }
      }
    }
  }
};

// Operand rows q, reduction k: Â itself.
template <typename T>
struct AHatAlongK {
  static constexpr bool kAlongK = true;
  Factors<T> f;
  __device__ __forceinline__ void load8(int64_t row, int64_t k, int64_t, float (&v)[8]) const { f.a_hat8(row, k, v); }
};

// Operand rows k, reduction q: Â^T.
template <typename T>
struct AHatAlongRows {
  static constexpr bool kAlongK = false;
  Factors<T> f;
  __device__ __forceinline__ void load8(int64_t row, int64_t q, int64_t q_end, float (&v)[8]) const {
    f.a_hat8(q < q_end ? q : f.rh, row, v);
  }
};

// Operand rows n, reduction q: B̂.
template <typename T>
struct BHatAlongK {
  static constexpr bool kAlongK = true;
  Factors<T> f;
  __device__ __forceinline__ void load8(int64_t row, int64_t q, int64_t, float (&v)[8]) const { f.b_hat8(row, q, v); }
};

// Operand rows q, reduction n: B̂^T.
template <typename T>
struct BHatAlongRows {
  static constexpr bool kAlongK = false;
  Factors<T> f;
  __device__ __forceinline__ void load8(int64_t row, int64_t n, int64_t n_end, float (&v)[8]) const {
    f.b_hat8(n < n_end ? n : f.b.rows, row, v);
  }
};

template <typename T>
__device__ __forceinline__ Factors<T> factors(const Args<T>& a, const uint16_t* table) {
  return Factors<T>{a.a, a.b, a.h, table, a.r, a.rh};
}

// Shared memory of a kernel: the two pipeline stages (or the staged output tile after the main loop), then
// `extra` bytes, then the pair table.
template <class Math>
__host__ __device__ constexpr size_t tile_bytes() {
  return 2 * static_cast<size_t>(Math::kStageBytes) > static_cast<size_t>(kTile) * (kTile + 4) * sizeof(float)
             ? 2 * static_cast<size_t>(Math::kStageBytes)
             : static_cast<size_t>(kTile) * (kTile + 4) * sizeof(float);
}

template <class Math>
__device__ __forceinline__ uint16_t* table_at(unsigned char* smem, size_t extra) {
  return reinterpret_cast<uint16_t*>(smem + tile_bytes<Math>() + extra);
}

// ---- forward -------------------------------------------------------------------------------------------

// Z[m0.., q0..] = x . Â^T; grid (q tiles, m tiles).
template <typename T, class Math>
__global__ void __launch_bounds__(Math::Shape::kThreads) z_kernel(const Args<T> a) {
  PERFKERN_DYNAMIC_SMEM(uint4, smem_u4);
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_u4);
  uint16_t* table = table_at<Math>(smem, 0);
  build_pairs(table, a.r, a.rh, a.mode);
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile;
  typename Math::Acc acc;
  Math::zero(acc);
  tile::mainloop<Math>(tile::RowsAlongK<T>{a.x}, AHatAlongK<T>{factors(a, table)}, m0, q0, 0, a.k, smem, acc);
  Math::for_each_pair(acc, [&](int row, int col, float v0, float v1) {
    const int64_t m = m0 + row;
    const int64_t q = q0 + col;
    if (m < a.m && q < a.rh) {
      float* dst = a.z_out + m * a.z.row_stride + q;
      dst[0] = v0;
      if (q + 1 < a.rh) {
        dst[1] = v1;
      }
    }
  });
}

// out[m0.., n0..] (+)= s Z . B̂^T; grid (n tiles, m tiles).
template <typename T, class Math>
__global__ void __launch_bounds__(Math::Shape::kThreads) out_kernel(const Args<T> a) {
  PERFKERN_DYNAMIC_SMEM(uint4, smem_u4);
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_u4);
  uint16_t* table = table_at<Math>(smem, 0);
  build_pairs(table, a.r, a.rh, a.mode);
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile;
  typename Math::Acc acc;
  Math::zero(acc);
  tile::mainloop<Math>(tile::RowsAlongK<float>{a.z}, BHatAlongK<T>{factors(a, table)}, m0, n0, 0, a.rh, smem, acc);
  Math::for_each_pair(acc, [&](int row, int col, float v0, float v1) {
    const int64_t m = m0 + row;
    const int64_t n = n0 + col;
    if (m >= a.m || n >= a.n) {
      return;
    }
    const int64_t at = m * a.out_row_stride + n;
    const float add0 = a.accumulate ? tile::load_elem<T>(a.out, at) : 0.0f;
    tile::store_elem<T>(a.out, at, add0 + a.scale * v0);
    if (n + 1 < a.n) {
      const float add1 = a.accumulate ? tile::load_elem<T>(a.out, at + 1) : 0.0f;
      tile::store_elem<T>(a.out, at + 1, add1 + a.scale * v1);
    }
  });
}

// ΔW[n0.., k0..] = s B̂ . Â (the merged weight); grid (k tiles, n tiles).
template <typename T, class Math>
__global__ void __launch_bounds__(Math::Shape::kThreads) delta_kernel(const Args<T> a) {
  PERFKERN_DYNAMIC_SMEM(uint4, smem_u4);
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_u4);
  uint16_t* table = table_at<Math>(smem, 0);
  build_pairs(table, a.r, a.rh, a.mode);
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile;
  typename Math::Acc acc;
  Math::zero(acc);
  const Factors<T> f = factors(a, table);
  tile::mainloop<Math>(BHatAlongK<T>{f}, AHatAlongRows<T>{f}, n0, k0, 0, a.rh, smem, acc);
  Math::for_each_pair(acc, [&](int row, int col, float v0, float v1) {
    const int64_t n = n0 + row;
    const int64_t k = k0 + col;
    if (n < a.n && k < a.k) {
      const int64_t at = n * a.out_row_stride + k;
      tile::store_elem<T>(a.out, at, a.scale * v0);
      if (k + 1 < a.k) {
        tile::store_elem<T>(a.out, at + 1, a.scale * v1);
      }
    }
  });
}

// ---- backward ------------------------------------------------------------------------------------------

// dZ[m0.., q0..] = s G . B̂; grid (q tiles, m tiles).
template <typename T, class Math>
__global__ void __launch_bounds__(Math::Shape::kThreads) dz_kernel(const Args<T> a) {
  PERFKERN_DYNAMIC_SMEM(uint4, smem_u4);
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_u4);
  uint16_t* table = table_at<Math>(smem, 0);
  build_pairs(table, a.r, a.rh, a.mode);
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile;
  typename Math::Acc acc;
  Math::zero(acc);
  tile::mainloop<Math>(tile::RowsAlongK<T>{a.g}, BHatAlongRows<T>{factors(a, table)}, m0, q0, 0, a.n, smem, acc);
  Math::for_each_pair(acc, [&](int row, int col, float v0, float v1) {
    const int64_t m = m0 + row;
    const int64_t q = q0 + col;
    if (m < a.m && q < a.rh) {
      const int64_t at = m * a.dz.row_stride + q;
      tile::store_elem<T>(a.dz_out, at, a.scale * v0);
      if (q + 1 < a.rh) {
        tile::store_elem<T>(a.dz_out, at + 1, a.scale * v1);
      }
    }
  });
}

// dx[m0.., k0..] (+)= dZ . Â; grid (k tiles, m tiles).
template <typename T, class Math>
__global__ void __launch_bounds__(Math::Shape::kThreads) dx_kernel(const Args<T> a) {
  PERFKERN_DYNAMIC_SMEM(uint4, smem_u4);
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_u4);
  uint16_t* table = table_at<Math>(smem, 0);
  build_pairs(table, a.r, a.rh, a.mode);
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile;
  typename Math::Acc acc;
  Math::zero(acc);
  tile::mainloop<Math>(tile::RowsAlongK<T>{a.dz}, AHatAlongRows<T>{factors(a, table)}, m0, k0, 0, a.rh, smem, acc);
  Math::for_each_pair(acc, [&](int row, int col, float v0, float v1) {
    const int64_t m = m0 + row;
    const int64_t k = k0 + col;
    if (m < a.m && k < a.k) {
      const int64_t at = m * a.dx_row_stride + k;
      tile::store_elem<T>(a.dx, at, (a.accumulate ? tile::load_elem<T>(a.dx, at) : 0.0f) + v0);
      if (k + 1 < a.k) {
        tile::store_elem<T>(a.dx, at + 1, (a.accumulate ? tile::load_elem<T>(a.dx, at + 1) : 0.0f) + v1);
      }
    }
  });
}

// Shared memory after the tile of the fold kernels: two [64][r + 1] fp32 buffers.
inline __host__ __device__ size_t fold_bytes(int r) { return 2 * static_cast<size_t>(kTile) * (r + 1) * sizeof(float); }

// A partial dB [n0 .. n0 + 64, r] over the rows of split blockIdx.y: for every chunk of 64 columns of r', the tile
// dB̂ = s G^T . Z of the chunk, folded into dB on chip (thread t < 64 owns row n0 + t, so no two threads add to
// one entry). Grid (n tiles, splits).
template <typename T, class Math>
__global__ void __launch_bounds__(Math::Shape::kThreads) db_kernel(const Args<T> a) {
  PERFKERN_DYNAMIC_SMEM(uint4, smem_u4);
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_u4);
  const int pitch = a.r + 1;
  float* d_b = reinterpret_cast<float*>(smem + tile_bytes<Math>());
  float* b_rows = d_b + kTile * pitch;
  uint16_t* table = table_at<Math>(smem, fold_bytes(a.r));
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t m_begin = static_cast<int64_t>(blockIdx.y) * a.rows_b;
  const int64_t m_end = m_begin + a.rows_b < a.m ? m_begin + a.rows_b : a.m;
  for (int e = static_cast<int>(threadIdx.x); e < kTile * a.r; e += static_cast<int>(blockDim.x)) {
    const int t = e / a.r;
    const int i = e % a.r;
    d_b[t * pitch + i] = 0.0f;
    b_rows[t * pitch + i] = n0 + t < a.n ? tile::load_elem<T>(a.b.ptr, (n0 + t) * a.b.row_stride + i) : 0.0f;
  }
  build_pairs(table, a.r, a.rh, a.mode);
  float* staged = reinterpret_cast<float*>(smem);
  constexpr int kPitch = kTile + 4;
  for (int64_t q0 = 0; q0 < a.rh; q0 += kTile) {
    typename Math::Acc acc;
    Math::zero(acc);
    tile::mainloop<Math>(tile::ColsAlongRows<T>{a.g}, tile::ColsAlongRows<float>{a.z}, n0, q0, m_begin, m_end, smem,
                         acc);
    tile::stage_acc<Math>(acc, staged);
    const int t = static_cast<int>(threadIdx.x);
    if (t < kTile) {
      float* row = d_b + t * pitch;
      const float* bt = b_rows + t * pitch;
      const int q_stop = a.rh - q0 < kTile ? static_cast<int>(a.rh - q0) : kTile;
      for (int qq = 0; qq < q_stop; ++qq) {
        const int q = static_cast<int>(q0) + qq;
        const float v = a.scale * staged[t * kPitch + qq];
        const int i = table[q] & 0xff;
        if (q < a.r) {
          row[i] += v;
        } else {
          // d(b_i b_j) = b_j db_i + b_i db_j; a square pair adds twice to one column.
          const int j = table[q] >> 8;
          row[i] += v * bt[j];
          row[j] += v * bt[i];
        }
      }
    }
    __syncthreads();
  }
  float* part = a.part_b + static_cast<int64_t>(blockIdx.y) * a.n * a.r;
  for (int e = static_cast<int>(threadIdx.x); e < kTile * a.r; e += static_cast<int>(blockDim.x)) {
    const int t = e / a.r;
    const int i = e % a.r;
    if (n0 + t < a.n) {
      part[(n0 + t) * a.r + i] = d_b[t * pitch + i];
    }
  }
}

// A partial dA [r, k0 .. k0 + 64] and dh over the rows of split blockIdx.y: for every chunk of 64 rows of r', the
// tile dÂ = dZ^T . x of the chunk, folded into dA on chip (thread t < 64 owns column k0 + t) and into dh (each
// warp reduces whole rows of the tile over its 64 columns). Grid (k tiles, splits).
template <typename T, class Math>
__global__ void __launch_bounds__(Math::Shape::kThreads) da_kernel(const Args<T> a) {
  PERFKERN_DYNAMIC_SMEM(uint4, smem_u4);
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_u4);
  // [r][64] each, column t of thread t: consecutive threads, consecutive banks.
  float* d_a = reinterpret_cast<float*>(smem + tile_bytes<Math>());
  float* a_cols = d_a + kTile * (a.r + 1);
  uint16_t* table = table_at<Math>(smem, fold_bytes(a.r));
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t m_begin = static_cast<int64_t>(blockIdx.y) * a.rows_a;
  const int64_t m_end = m_begin + a.rows_a < a.m ? m_begin + a.rows_a : a.m;
  for (int e = static_cast<int>(threadIdx.x); e < kTile * a.r; e += static_cast<int>(blockDim.x)) {
    const int i = e / kTile;
    const int t = e % kTile;
    d_a[i * kTile + t] = 0.0f;
    a_cols[i * kTile + t] = k0 + t < a.k ? tile::load_elem<T>(a.a.ptr, i * a.a.row_stride + k0 + t) : 0.0f;
  }
  build_pairs(table, a.r, a.rh, a.mode);
  float* staged = reinterpret_cast<float*>(smem);
  constexpr int kPitch = kTile + 4;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warps = static_cast<int>(blockDim.x) >> 5;
  const int64_t pairs = a.rh - a.r;
  float* part_h = a.want_h ? a.part_h + (static_cast<int64_t>(blockIdx.x) * a.splits_a + blockIdx.y) * pairs : nullptr;
  for (int64_t q0 = 0; q0 < a.rh; q0 += kTile) {
    typename Math::Acc acc;
    Math::zero(acc);
    tile::mainloop<Math>(tile::ColsAlongRows<T>{a.dz}, tile::ColsAlongRows<T>{a.x}, q0, k0, m_begin, m_end, smem,
                         acc);
    tile::stage_acc<Math>(acc, staged);
    const int q_stop = a.rh - q0 < kTile ? static_cast<int>(a.rh - q0) : kTile;
    const int t = static_cast<int>(threadIdx.x);
    if (t < kTile) {
      for (int qq = 0; qq < q_stop; ++qq) {
        const int q = static_cast<int>(q0) + qq;
        const float v = staged[qq * kPitch + t];
        const int i = table[q] & 0xff;
        if (q < a.r) {
          d_a[i * kTile + t] += v;
        } else {
          // d(h a_i a_j) = h (a_j da_i + a_i da_j); a square pair adds twice to one row.
          const int j = table[q] >> 8;
          const float hv = tile::load_elem<T>(a.h, q - a.r) * v;
          d_a[i * kTile + t] += hv * a_cols[j * kTile + t];
          d_a[j * kTile + t] += hv * a_cols[i * kTile + t];
        }
      }
    }
    if (part_h != nullptr) {
      // dh_p = sum_k dÂ[r + p, k] a_i[k] a_j[k]: this tile's 64 columns (zero past K).
      for (int qq = warp; qq < q_stop; qq += warps) {
        const int q = static_cast<int>(q0) + qq;
        if (q < a.r) {
          continue;
        }
        const int i = table[q] & 0xff;
        const int j = table[q] >> 8;
        float s = 0.0f;
        for (int c = lane; c < kTile; c += 32) {
          s += staged[qq * kPitch + c] * a_cols[i * kTile + c] * a_cols[j * kTile + c];
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
          s += __shfl_xor_sync(0xffffffffu, s, off);
        }
        if (lane == 0) {
          part_h[q - a.r] = s;
        }
      }
    }
    __syncthreads();
  }
  if (a.part_a == nullptr) {
    return;
  }
  float* part = a.part_a + static_cast<int64_t>(blockIdx.y) * a.r * a.k;
  for (int e = static_cast<int>(threadIdx.x); e < kTile * a.r; e += static_cast<int>(blockDim.x)) {
    const int i = e / kTile;
    const int t = e % kTile;
    if (k0 + t < a.k) {
      part[i * a.k + k0 + t] = d_a[i * kTile + t];
    }
  }
}

// out[row, col] = sum over parts of part[s][row][col] (in part order), as T; out has row stride out_row_stride.
template <typename T>
__global__ void __launch_bounds__(256) reduce_kernel(const float* part, int64_t parts, int64_t rows, int64_t cols,
                                                     void* out, int64_t out_row_stride) {
  const int64_t total = rows * cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * 256) {
    float s = 0.0f;
    for (int64_t p = 0; p < parts; ++p) {
      s += part[p * total + e];
    }
    tile::store_elem<T>(out, (e / cols) * out_row_stride + e % cols, s);
  }
}

// ---- launch --------------------------------------------------------------------------------------------

template <typename T, class Math, class Kernel>
perfkern_status_t launch_grid(const char* name, Kernel kernel, int64_t gx, int64_t gy, size_t extra, const Args<T>& a,
                              cudaStream_t stream) {
  if (gx == 0 || gy == 0) {
    return PERFKERN_SUCCESS;
  }
  if (gx > 0x7fffffff || gy > 65535) {
    return detail::fail(PERFKERN_ERROR_INVALID_VALUE,
                        std::string(name) + ": the problem needs a grid of " + std::to_string(gx) + " x " +
                            std::to_string(gy) + " CTAs, more than one launch takes (2^31 - 1 x 65535)");
  }
  const size_t smem = tile_bytes<Math>() + extra + static_cast<size_t>(a.rh) * sizeof(uint16_t);
  return detail::launch(name, kernel, dim3(static_cast<unsigned int>(gx), static_cast<unsigned int>(gy)),
                        Math::Shape::kThreads, smem, stream, a);
}

inline int64_t tiles(int64_t extent) { return (extent + kTile - 1) / kTile; }

template <typename T>
perfkern_status_t forward(const Args<T>& a, cudaStream_t stream) {
  using MathZ = tile::MathFor<T, tile::RowsAlongK<T>, AHatAlongK<T>>;
  using MathOut = tile::MathFor<T, tile::RowsAlongK<float>, BHatAlongK<T>>;
  PERFKERN_RETURN_IF_ERROR(
      (launch_grid<T, MathZ>("pera z kernel", z_kernel<T, MathZ>, tiles(a.rh), tiles(a.m), 0, a, stream)));
  return launch_grid<T, MathOut>("pera out kernel", out_kernel<T, MathOut>, tiles(a.n), tiles(a.m), 0, a, stream);
}

template <typename T>
perfkern_status_t delta_weight(const Args<T>& a, cudaStream_t stream) {
  using Math = tile::MathFor<T, BHatAlongK<T>, AHatAlongRows<T>>;
  return launch_grid<T, Math>("pera delta_weight kernel", delta_kernel<T, Math>, tiles(a.k), tiles(a.n), 0, a, stream);
}

template <typename T>
perfkern_status_t reduce(const float* part, int64_t parts, int64_t rows, int64_t cols, void* out,
                         int64_t out_row_stride, int device, cudaStream_t stream) {
  if (rows * cols == 0) {
    return PERFKERN_SUCCESS;
  }
  unsigned int blocks = 0;
  PERFKERN_RETURN_IF_ERROR(detail::grid_size(device, rows * cols, 256, &blocks));
  return detail::launch("pera reduce kernel", reduce_kernel<T>, blocks, 256, 0, stream, part, parts, rows, cols, out,
                        out_row_stride);
}

template <typename T>
perfkern_status_t backward(const Args<T>& a, const BackwardWork& w, cudaStream_t stream) {
  using MathZ = tile::MathFor<T, tile::RowsAlongK<T>, AHatAlongK<T>>;
  using MathDz = tile::MathFor<T, tile::RowsAlongK<T>, BHatAlongRows<T>>;
  using MathDx = tile::MathFor<T, tile::RowsAlongK<T>, AHatAlongRows<T>>;
  using MathFold = tile::MathFor<T, tile::ColsAlongRows<T>, tile::ColsAlongRows<float>>;
  using MathFoldA = tile::MathFor<T, tile::ColsAlongRows<T>, tile::ColsAlongRows<T>>;
  if (w.recompute_z) {
    PERFKERN_RETURN_IF_ERROR(
        (launch_grid<T, MathZ>("pera z kernel", z_kernel<T, MathZ>, tiles(a.rh), tiles(a.m), 0, a, stream)));
  }
  if (w.dz) {
    PERFKERN_RETURN_IF_ERROR(
        (launch_grid<T, MathDz>("pera dz kernel", dz_kernel<T, MathDz>, tiles(a.rh), tiles(a.m), 0, a, stream)));
  }
  if (w.db) {
    PERFKERN_RETURN_IF_ERROR((launch_grid<T, MathFold>("pera db kernel", db_kernel<T, MathFold>, tiles(a.n), a.splits_b,
                                                      fold_bytes(a.r), a, stream)));
    PERFKERN_RETURN_IF_ERROR(reduce<T>(a.part_b, a.splits_b, a.n, a.r, w.d_b, w.d_b_row_stride, w.device, stream));
  }
  if (w.da) {
    PERFKERN_RETURN_IF_ERROR((launch_grid<T, MathFoldA>("pera da kernel", da_kernel<T, MathFoldA>, tiles(a.k),
                                                       a.splits_a, fold_bytes(a.r), a, stream)));
    if (w.d_a != nullptr) {
      PERFKERN_RETURN_IF_ERROR(reduce<T>(a.part_a, a.splits_a, a.r, a.k, w.d_a, w.d_a_row_stride, w.device, stream));
    }
    if (a.want_h) {
      PERFKERN_RETURN_IF_ERROR(
          reduce<T>(a.part_h, tiles(a.k) * a.splits_a, 1, a.rh - a.r, w.d_h, 0, w.device, stream));
    }
  }
  if (w.dx) {
    PERFKERN_RETURN_IF_ERROR(
        (launch_grid<T, MathDx>("pera dx kernel", dx_kernel<T, MathDx>, tiles(a.k), tiles(a.m), 0, a, stream)));
  }
  return PERFKERN_SUCCESS;
}

#endif  // PERFKERN_DEVICE_CODE

// One translation unit per dtype (pera_{f32,f16,bf16}.cu), so that nvcc builds them in parallel.
perfkern_status_t forward_f32(const Args<float>& a, cudaStream_t stream);
perfkern_status_t forward_f16(const Args<__half>& a, cudaStream_t stream);
perfkern_status_t forward_bf16(const Args<__nv_bfloat16>& a, cudaStream_t stream);
perfkern_status_t delta_weight_f32(const Args<float>& a, cudaStream_t stream);
perfkern_status_t delta_weight_f16(const Args<__half>& a, cudaStream_t stream);
perfkern_status_t delta_weight_bf16(const Args<__nv_bfloat16>& a, cudaStream_t stream);
perfkern_status_t backward_f32(const Args<float>& a, const BackwardWork& w, cudaStream_t stream);
perfkern_status_t backward_f16(const Args<__half>& a, const BackwardWork& w, cudaStream_t stream);
perfkern_status_t backward_bf16(const Args<__nv_bfloat16>& a, const BackwardWork& w, cudaStream_t stream);

}  // namespace pera
}  // namespace perfkern

#endif  // PERFKERN_PERA_PERA_CUH_
