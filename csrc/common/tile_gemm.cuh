// The tile GEMM the dense-product kernels of the core are built from (the sparse weight gradient, PERA's six
// products): one CTA computes a BM x BN tile of C = sum_k A[m, k] B[n, k] over a range of the reduction, with
// each operand produced by an *operand* object rather than read from a fixed layout. An operand hands out
// vectors of 8 consecutive elements along whichever dimension it is contiguous in, computed from global memory
// as it likes (a plain load, a transposed view, a factor generated on chip from two rows of another matrix) and
// zero outside the problem. That is what lets PERA generate its expanded factors tile by tile and never write
// them to memory.
//
// Two arithmetic policies, chosen by the element type:
//   Mma16<T>  fp16/bf16 operands on the tensor cores (mma.sync m16n8k16, fp32 accumulators), fragments loaded
//             with ldmatrix, transposed (.trans) for an operand stored along its rows;
//   Ffma      fp32 operands on the CUDA cores, one fused multiply-add per product (exact fp32 arithmetic, never
//             TF32), each thread a TM x TN block of outer products.
// The main loop double-buffers shared memory: the next block's operand vectors are fetched into registers
// (global latency hidden behind this block's arithmetic), then written to the other stage; one barrier a block.
#ifndef PERFKERN_COMMON_TILE_GEMM_CUH_
#define PERFKERN_COMMON_TILE_GEMM_CUH_

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/kernel.cuh"
#include "common/ptx.cuh"

namespace perfkern {
namespace tile {

// BM x BN outputs per CTA, the reduction in blocks of BK, kWarpsM x kWarpsN warps.
template <int BM_, int BN_, int BK_, int kWarpsM_, int kWarpsN_>
struct Shape {
  static constexpr int BM = BM_;
  static constexpr int BN = BN_;
  static constexpr int BK = BK_;
  static constexpr int kWarpsM = kWarpsM_;
  static constexpr int kWarpsN = kWarpsN_;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
};

// ---- elements ------------------------------------------------------------------------------------------

template <typename T>
__host__ __device__ __forceinline__ float to_float(uint16_t bits) {
  if constexpr (std::is_same<T, __half>::value) {
    return __half2float(__ushort_as_half(bits));
  } else {
    return __bfloat162float(__ushort_as_bfloat16(bits));
  }
}

template <typename T>
__host__ __device__ __forceinline__ uint16_t from_float(float v) {
  if constexpr (std::is_same<T, __half>::value) {
    return __half_as_ushort(__float2half_rn(v));
  } else {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
}

#if PERFKERN_DEVICE_CODE

// Element i of a T array, as fp32.
template <typename T>
__device__ __forceinline__ float load_elem(const void* base, int64_t i) {
  if constexpr (std::is_same<T, float>::value) {
    return __ldg(static_cast<const float*>(base) + i);
  } else {
    return to_float<T>(__ldg(static_cast<const uint16_t*>(base) + i));
  }
}

// Stores v as the T element i.
template <typename T>
__device__ __forceinline__ void store_elem(void* base, int64_t i, float v) {
  if constexpr (std::is_same<T, float>::value) {
    static_cast<float*>(base)[i] = v;
  } else {
    static_cast<uint16_t*>(base)[i] = from_float<T>(v);
  }
}

// Eight consecutive T elements at p (16-byte aligned), as fp32.
template <typename T>
__device__ __forceinline__ void load_vec8(const void* p, float (&v)[8]) {
  if constexpr (std::is_same<T, float>::value) {
    const float4 lo = __ldg(static_cast<const float4*>(p));
    const float4 hi = __ldg(static_cast<const float4*>(p) + 1);
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
  } else {
    const uint4 w = __ldg(static_cast<const uint4*>(p));
    const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      v[2 * e] = to_float<T>(static_cast<uint16_t>(u[e] & 0xffffu));
      v[2 * e + 1] = to_float<T>(static_cast<uint16_t>(u[e] >> 16));
    }
  }
}

#endif  // PERFKERN_DEVICE_CODE

// A row-major matrix [rows, cols] of T with unit column stride, in global memory. `vec`: 16-byte vector loads
// of 8 elements at columns that are multiples of 8 are aligned (see vec_ok).
template <typename T>
struct Matrix {
  const void* ptr;
  int64_t rows;
  int64_t cols;
  int64_t row_stride;
  bool vec;
};

// Whether 8-element vectors at columns that are multiples of 8 are 16-byte aligned in every row (fp32 vectors
// are two float4).
template <typename T>
__host__ __device__ inline bool vec_ok(const void* ptr, int64_t row_stride, int64_t rows) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 &&
         (rows <= 1 || (row_stride * static_cast<int64_t>(sizeof(T))) % 16 == 0);
}

template <typename T>
__host__ __device__ inline Matrix<T> matrix(const void* ptr, int64_t rows, int64_t cols, int64_t row_stride) {
  return Matrix<T>{ptr, rows, cols, row_stride, vec_ok<T>(ptr, row_stride, rows)};
}

#if PERFKERN_DEVICE_CODE

// m[r, c .. c + 7] as fp32; entries at or past column `limit` (<= cols), or in a row past the end, are zero.
template <typename T>
__device__ __forceinline__ void load_row8(const Matrix<T>& m, int64_t r, int64_t c, int64_t limit, float (&v)[8]) {
  const int64_t n = r < m.rows ? limit - c : 0;
  if (n <= 0) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      v[e] = 0.0f;
    }
    return;
  }
  const char* row = static_cast<const char*>(m.ptr) + static_cast<int64_t>(sizeof(T)) * r * m.row_stride;
  if (m.vec && n >= 8) {
    load_vec8<T>(row + static_cast<int64_t>(sizeof(T)) * c, v);
    return;
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    v[e] = e < n ? load_elem<T>(row, c + e) : 0.0f;
  }
}

// ---- operands --------------------------------------------------------------------------------------------
//
// An operand is a type with
//   static constexpr bool kAlongK;  // its vectors run along the reduction (else along its rows)
//   void load8(int64_t row, int64_t k, int64_t k_end, float (&v)[8]) const;
// giving elements (row, k .. k + 7) or (row .. row + 7, k), zero at k >= k_end and outside the problem.

// Operand element (row, k) = m[row, k]: the matrix's rows are the operand's rows.
template <typename T>
struct RowsAlongK {
  static constexpr bool kAlongK = true;
  Matrix<T> m;
  __device__ __forceinline__ void load8(int64_t row, int64_t k, int64_t k_end, float (&v)[8]) const {
    load_row8(m, row, k, k_end < m.cols ? k_end : m.cols, v);
  }
};

// Operand element (row, k) = m[k, row]: the matrix's rows are the reduction (a transposed view).
template <typename T>
struct ColsAlongRows {
  static constexpr bool kAlongK = false;
  Matrix<T> m;
  __device__ __forceinline__ void load8(int64_t row, int64_t k, int64_t k_end, float (&v)[8]) const {
    load_row8(m, k < k_end ? k : m.rows, row, m.cols, v);
  }
};

// ---- arithmetic policies ---------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// fp16/bf16 on the tensor cores. Operand tiles in shared memory, 16-bit, one per stage: an operand whose vectors
// run along K is stored [rows][BK + 8] (ldmatrix), one whose vectors run along its rows [BK][rows + 8]
// (ldmatrix.trans). The 8-element pad puts the 8 rows an ldmatrix reads in distinct banks.
template <typename T, class S, bool kAAlongK, bool kBAlongK>
struct Mma16 {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "Mma16 is fp16/bf16");
  using Shape = S;
  static constexpr int kWM = S::BM / S::kWarpsM;
  static constexpr int kWN = S::BN / S::kWarpsN;
  static constexpr int kMI = kWM / 16;
  static constexpr int kNI = kWN / 8;
  static_assert(kWM % 16 == 0 && kWN % 16 == 0 && S::BK % 16 == 0, "warp tiles are whole 16 x 16 blocks");
  static constexpr int kAPitch = kAAlongK ? S::BK + 8 : S::BM + 8;
  static constexpr int kBPitch = kBAlongK ? S::BK + 8 : S::BN + 8;
  static constexpr int kABytes = (kAAlongK ? S::BM : S::BK) * kAPitch * 2;
  static constexpr int kBBytes = (kBAlongK ? S::BN : S::BK) * kBPitch * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static_assert(kABytes % 16 == 0 && kBBytes % 16 == 0, "stage parts stay 16-byte aligned");

  struct Acc {
    float v[kMI][kNI][4];
  };

  static __device__ __forceinline__ void zero(Acc& acc) {
#pragma unroll
    for (int i = 0; i < kMI; ++i) {
#pragma unroll
      for (int j = 0; j < kNI; ++j) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          acc.v[i][j][c] = 0.0f;
        }
      }
    }
  }

  // The 8-element vector of operand kOperand (0: A, 1: B) at tile coordinates (row, k).
  template <int kOperand, bool kAlongK>
  static __device__ __forceinline__ void store8(unsigned char* stage, int row, int k, const float (&v)[8]) {
    static_assert(kAlongK == (kOperand == 0 ? kAAlongK : kBAlongK), "the tile layout follows the operand");
    constexpr int kPitch = kOperand == 0 ? kAPitch : kBPitch;
    uint16_t* tile = reinterpret_cast<uint16_t*>(stage + (kOperand == 0 ? 0 : kABytes));
    const int at = kAlongK ? row * kPitch + k : k * kPitch + row;
    *reinterpret_cast<uint4*>(tile + at) =
        make_uint4(pack2(from_float<T>(v[0]), from_float<T>(v[1])), pack2(from_float<T>(v[2]), from_float<T>(v[3])),
                   pack2(from_float<T>(v[4]), from_float<T>(v[5])), pack2(from_float<T>(v[6]), from_float<T>(v[7])));
  }

  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const uint32_t b[2] = {b0, b1};
    if constexpr (std::is_same<T, __half>::value) {
      ptx::mma_m16n8k16_f32_f16(d, a, b);
    } else {
      ptx::mma_m16n8k16_f32_bf16(d, a, b);
    }
  }

  // acc += the stage's A tile times its B tile, this warp's kWM x kWN part.
  static __device__ __forceinline__ void compute(const unsigned char* stage, Acc& acc) {
    const int warp = static_cast<int>(threadIdx.x) >> 5;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int wm0 = (warp % S::kWarpsM) * kWM;
    const int wn0 = (warp / S::kWarpsM) * kWN;
    const uint16_t* ta = reinterpret_cast<const uint16_t*>(stage);
    const uint16_t* tb = reinterpret_cast<const uint16_t*>(stage + kABytes);
    // ldmatrix x4: lane 8j + i gives row i of matrix j. A fragment (16 x 16, rows m): matrices (m 0-7, k 0-7),
    // (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15). B fragments of two n8 tiles: (n 0-7, k 0-7),
    // (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
    const int i = lane & 7;
    const int j = lane >> 3;
#pragma unroll
    for (int ks = 0; ks < S::BK; ks += 16) {
      uint32_t af[kMI][4];
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi) {
        const int m0 = wm0 + 16 * mi;
        if constexpr (kAAlongK) {
          const uint16_t* p = ta + (m0 + i + 8 * (j & 1)) * kAPitch + ks + 8 * (j >> 1);
          ptx::ldmatrix_sync_aligned_m8n8_x4_shared_b16(af[mi], ptx::smem_addr(p));
        } else {
          const uint16_t* p = ta + (ks + i + 8 * (j >> 1)) * kAPitch + m0 + 8 * (j & 1);
          ptx::ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(af[mi], ptx::smem_addr(p));
        }
      }
#pragma unroll
      for (int nj = 0; nj < kNI / 2; ++nj) {
        const int n0 = wn0 + 16 * nj;
        uint32_t bf[4];
        if constexpr (kBAlongK) {
          const uint16_t* p = tb + (n0 + i + 8 * (j >> 1)) * kBPitch + ks + 8 * (j & 1);
          ptx::ldmatrix_sync_aligned_m8n8_x4_shared_b16(bf, ptx::smem_addr(p));
        } else {
          const uint16_t* p = tb + (ks + i + 8 * (j & 1)) * kBPitch + n0 + 8 * (j >> 1);
          ptx::ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(bf, ptx::smem_addr(p));
        }
#pragma unroll
        for (int mi = 0; mi < kMI; ++mi) {
          mma(acc.v[mi][2 * nj], af[mi], bf[0], bf[1]);
          mma(acc.v[mi][2 * nj + 1], af[mi], bf[2], bf[3]);
        }
      }
    }
  }

  // f(row, col, v0, v1) for every pair of this thread's accumulators: v0 at (row, col), v1 at (row, col + 1),
  // tile coordinates, col even. (The m16n8 accumulator: lane 4g + t holds rows g and g + 8, columns 2t, 2t + 1.)
  template <class F>
  static __device__ __forceinline__ void for_each_pair(const Acc& acc, F&& f) {
    const int warp = static_cast<int>(threadIdx.x) >> 5;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int wm0 = (warp % S::kWarpsM) * kWM;
    const int wn0 = (warp / S::kWarpsM) * kWN;
#pragma unroll
    for (int mi = 0; mi < kMI; ++mi) {
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          f(wm0 + 16 * mi + (lane >> 2) + 8 * h, wn0 + 8 * ni + 2 * (lane & 3), acc.v[mi][ni][2 * h],
            acc.v[mi][ni][2 * h + 1]);
        }
      }
    }
  }
};

// fp32 on the CUDA cores: both operand tiles stored [BK][rows + 4] fp32, each thread a TM x TN block of the
// output (rows ty*TM.., columns tx*TN..), one FFMA per product.
template <class S, int TM, int TN>
struct Ffma {
  using Shape = S;
  static_assert((S::BM / TM) * (S::BN / TN) == S::kThreads, "one TM x TN block per thread");
  static_assert(TM % 4 == 0 && TN % 4 == 0, "thread blocks are read as float4");
  static constexpr int kAPitch = S::BM + 4;
  static constexpr int kBPitch = S::BN + 4;
  static constexpr int kABytes = S::BK * kAPitch * 4;
  static constexpr int kBBytes = S::BK * kBPitch * 4;
  static constexpr int kStageBytes = kABytes + kBBytes;

  struct Acc {
    float v[TM][TN];
  };

  static __device__ __forceinline__ void zero(Acc& acc) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        acc.v[i][j] = 0.0f;
      }
    }
  }

  template <int kOperand, bool kAlongK>
  static __device__ __forceinline__ void store8(unsigned char* stage, int row, int k, const float (&v)[8]) {
    constexpr int kPitch = kOperand == 0 ? kAPitch : kBPitch;
    float* tile = reinterpret_cast<float*>(stage + (kOperand == 0 ? 0 : kABytes));
    if constexpr (kAlongK) {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        tile[(k + e) * kPitch + row] = v[e];
      }
    } else {
      float4* p = reinterpret_cast<float4*>(tile + k * kPitch + row);
      p[0] = make_float4(v[0], v[1], v[2], v[3]);
      p[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
  }

  static __device__ __forceinline__ void compute(const unsigned char* stage, Acc& acc) {
    const float* ta = reinterpret_cast<const float*>(stage);
    const float* tb = reinterpret_cast<const float*>(stage + kABytes);
    const int tx = static_cast<int>(threadIdx.x) % (S::BN / TN);
    const int ty = static_cast<int>(threadIdx.x) / (S::BN / TN);
#pragma unroll 4
    for (int k = 0; k < S::BK; ++k) {
      float a[TM];
      float b[TN];
#pragma unroll
      for (int i = 0; i < TM; i += 4) {
        const float4 w = *reinterpret_cast<const float4*>(ta + k * kAPitch + ty * TM + i);
        a[i] = w.x, a[i + 1] = w.y, a[i + 2] = w.z, a[i + 3] = w.w;
      }
#pragma unroll
      for (int j = 0; j < TN; j += 4) {
        const float4 w = *reinterpret_cast<const float4*>(tb + k * kBPitch + tx * TN + j);
        b[j] = w.x, b[j + 1] = w.y, b[j + 2] = w.z, b[j + 3] = w.w;
      }
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          acc.v[i][j] = fmaf(a[i], b[j], acc.v[i][j]);
        }
      }
    }
  }

  template <class F>
  static __device__ __forceinline__ void for_each_pair(const Acc& acc, F&& f) {
    const int tx = static_cast<int>(threadIdx.x) % (S::BN / TN);
    const int ty = static_cast<int>(threadIdx.x) / (S::BN / TN);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; j += 2) {
        f(ty * TM + i, tx * TN + j, acc.v[i][j], acc.v[i][j + 1]);
      }
    }
  }
};

// The policy for element type T with the operands' layouts: tensor cores for 16-bit, FFMA for fp32.
using Shape16 = Shape<64, 64, 32, 2, 2>;
using Shape32 = Shape<64, 64, 32, 2, 4>;
template <typename T, class OpA, class OpB, class S16 = Shape16>
using MathFor = typename std::conditional<std::is_same<T, float>::value, Ffma<Shape32, 4, 4>,
                                          Mma16<T, S16, OpA::kAlongK, OpB::kAlongK>>::type;

// ---- the main loop ----------------------------------------------------------------------------------------

// acc += sum over k in [k_begin, k_end) of A[a_row0 + i, k] B[b_row0 + j, k] for the tile's i < BM, j < BN.
// k_begin is a multiple of 8. smem holds two stages (2 * Math::kStageBytes). Ends with a barrier, after which
// shared memory is free.
template <class Math, class OpA, class OpB>
__device__ __forceinline__ void mainloop(const OpA& opa, const OpB& opb, int64_t a_row0, int64_t b_row0,
                                         int64_t k_begin, int64_t k_end, unsigned char* smem,
                                         typename Math::Acc& acc) {
  using S = typename Math::Shape;
  constexpr int kVecA = S::BM * S::BK / 8;
  constexpr int kVecB = S::BN * S::BK / 8;
  static_assert(kVecA % S::kThreads == 0 && kVecB % S::kThreads == 0, "whole vectors per thread");
  constexpr int kPerA = kVecA / S::kThreads;
  constexpr int kPerB = kVecB / S::kThreads;
  if (k_end <= k_begin) {
    return;
  }
  float ra[kPerA][8];
  float rb[kPerB][8];
  // Vector e of an operand: along K, consecutive threads take consecutive k of one row; along the rows,
  // consecutive rows of one k. Either way a warp reads contiguous memory.
  auto coord = [](int e, bool along_k, int rows, int& row, int& k) {
    if (along_k) {
      row = e / (S::BK / 8);
      k = 8 * (e % (S::BK / 8));
    } else {
      k = e / (rows / 8);
      row = 8 * (e % (rows / 8));
    }
  };
  auto fetch = [&](int64_t k0) {
#pragma unroll
    for (int v = 0; v < kPerA; ++v) {
      int row, k;
      coord(static_cast<int>(threadIdx.x) + v * S::kThreads, OpA::kAlongK, S::BM, row, k);
      opa.load8(a_row0 + row, k0 + k, k_end, ra[v]);
    }
#pragma unroll
    for (int v = 0; v < kPerB; ++v) {
      int row, k;
      coord(static_cast<int>(threadIdx.x) + v * S::kThreads, OpB::kAlongK, S::BN, row, k);
      opb.load8(b_row0 + row, k0 + k, k_end, rb[v]);
    }
  };
  auto stash = [&](unsigned char* stage) {
#pragma unroll
    for (int v = 0; v < kPerA; ++v) {
      int row, k;
      coord(static_cast<int>(threadIdx.x) + v * S::kThreads, OpA::kAlongK, S::BM, row, k);
      Math::template store8<0, OpA::kAlongK>(stage, row, k, ra[v]);
    }
#pragma unroll
    for (int v = 0; v < kPerB; ++v) {
      int row, k;
      coord(static_cast<int>(threadIdx.x) + v * S::kThreads, OpB::kAlongK, S::BN, row, k);
      Math::template store8<1, OpB::kAlongK>(stage, row, k, rb[v]);
    }
  };
  const int64_t blocks = (k_end - k_begin + S::BK - 1) / S::BK;
  fetch(k_begin);
  stash(smem);
  __syncthreads();
  for (int64_t kb = 0; kb < blocks; ++kb) {
    // The stage written here was read by the previous block's compute, before the barrier that ended it.
    const bool more = kb + 1 < blocks;
    if (more) {
      fetch(k_begin + (kb + 1) * S::BK);
    }
    Math::compute(smem + (kb & 1) * Math::kStageBytes, acc);
    if (more) {
      stash(smem + ((kb + 1) & 1) * Math::kStageBytes);
    }
    __syncthreads();
  }
}

// Writes the accumulators into a [BM][BN + 4] fp32 tile in shared memory (followed by a barrier).
template <class Math>
__device__ __forceinline__ void stage_acc(const typename Math::Acc& acc, float* tile) {
  constexpr int kPitch = Math::Shape::BN + 4;
  Math::for_each_pair(acc, [&](int row, int col, float v0, float v1) {
    tile[row * kPitch + col] = v0;
    tile[row * kPitch + col + 1] = v1;
  });
  __syncthreads();
}

#endif  // PERFKERN_DEVICE_CODE

}  // namespace tile
}  // namespace perfkern

#endif  // PERFKERN_COMMON_TILE_GEMM_CUH_
