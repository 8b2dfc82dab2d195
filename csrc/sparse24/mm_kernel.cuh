// The 2:4 sparse tensor-core GEMM with a fused low-rank term (DESIGN §3.3):
//   out[m, n] = sum_k x[m, k] Ws[n, k] + bias[n] + scale * sum_j T[m, j] B[n, j]
// Ws is 2:4 along K (values + mma-layout metadata, see mma_layout.cuh). Each CTA owns a BN x BM tile
// of out^T: the weight rows are the sparse A operand of mma.sp m16n8k32, x rows the B operand. The
// low-rank term goes first into the same fp32 accumulators (dense mma m16n8k16 over r, zero-padded to
// 16) and is scaled there, then the sparse K loop accumulates on top; bias is added in the epilogue.
// No M x N intermediate is written.
#ifndef PERFKERN_SPARSE24_MM_KERNEL_CUH_
#define PERFKERN_SPARSE24_MM_KERNEL_CUH_

#include <cstdint>
#include <string>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cuda_internal.h"
#include "common/kernel.cuh"
#include "common/ptx.cuh"
#include "perfkern/perfkern.h"
#include "sparse24/mma_layout.cuh"

namespace perfkern {
namespace sparse24 {
namespace mma {

// Elements are moved as raw 16-bit patterns; T only picks the mma type and the conversions.
struct MmArgs {
  const uint16_t* x;
  const uint16_t* values;
  const uint32_t* meta;
  const uint16_t* bias;
  const uint16_t* lora_t;
  const uint16_t* lora_b;
  uint16_t* out;
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t r;
  float scale;
  int64_t x_row_stride;
  int64_t values_row_stride;
  int64_t bias_stride;
  int64_t t_stride0;
  int64_t t_stride1;
  int64_t b_stride0;
  int64_t b_stride1;
  int64_t out_row_stride;
  int64_t tiles_n;
  int64_t tiles_m;
  bool x_vec;       // 16-byte cp.async for x; otherwise element loads
  bool values_vec;  // same for values
  bool out_vec;     // 16-byte stores of out
};

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

__host__ __device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

#if PERFKERN_DEVICE_CODE

// d += A (16 x 32, 2:4, metadata e, selector kSel) * B (32 x 8).
template <typename T, int kSel>
__device__ __forceinline__ void mma_sp(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e) {
  if constexpr (std::is_same<T, __half>::value) {
    ptx::mma_sp_m16n8k32_f32_f16<kSel>(d, a, b, e);
  } else {
    ptx::mma_sp_m16n8k32_f32_bf16<kSel>(d, a, b, e);
  }
}

// d += A (16 x 16) * B (16 x 8), dense.
template <typename T>
__device__ __forceinline__ void mma_dense(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same<T, __half>::value) {
    ptx::mma_m16n8k16_f32_f16(d, a, b);
  } else {
    ptx::mma_m16n8k16_f32_bf16(d, a, b);
  }
}

__device__ __forceinline__ uint16_t ld_elem(const uint16_t* p) { return __ldg(p); }

// One 16-byte chunk into shared memory: cp.async when the source is 16-byte aligned, else eight
// element loads (zeros for a missing source either way).
__device__ __forceinline__ void load_chunk(unsigned char* stage, const LoadTask& t, const uint16_t* base,
                                           bool vec) {
  unsigned char* dst = stage + t.dst;
  if (vec) {
    ptx::cp_async_cg_shared_global_16(
        ptx::smem_addr(dst), t.valid ? static_cast<const void*>(base + t.src) : static_cast<const void*>(base),
        t.valid ? 16 : 0);
    return;
  }
  uint16_t e[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (t.valid) {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      e[q] = ld_elem(base + t.src + q);
    }
  }
  *reinterpret_cast<uint4*>(dst) =
      make_uint4(pack2(e[0], e[1]), pack2(e[2], e[3]), pack2(e[4], e[5]), pack2(e[6], e[7]));
}

// Loop bounds are compile-time so that the copies of one stage unroll.
template <int kTotal, int kThreads, typename F>
__device__ __forceinline__ void for_each_task(F&& body) {
#pragma unroll
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int v = static_cast<int>(threadIdx.x) + i * kThreads;
    if (kTotal % kThreads == 0 || v < kTotal) {
      body(v);
    }
  }
}

template <class Cfg>
__device__ __forceinline__ void load_stage(const MmArgs& a, unsigned char* stage, int64_t n0, int64_t m0, int64_t kt) {
  using L = StageLoads<Cfg>;
  for_each_task<L::kVal, Cfg::kThreads>([&](int v) {
    load_chunk(stage, values_load<Cfg>(v, n0, kt, a.n, a.k, a.values_row_stride), a.values, a.values_vec);
  });
  for_each_task<L::kX, Cfg::kThreads>([&](int v) {
    load_chunk(stage, x_load<Cfg>(v, m0, kt, a.m, a.k, a.x_row_stride), a.x, a.x_vec);
  });
  for_each_task<L::kMeta, Cfg::kThreads>([&](int v) {
    const LoadTask t = meta_load<Cfg>(v, n0, kt, a.n, a.k);
    if (t.valid) {
      ptx::cp_async_cg_shared_global_16(ptx::smem_addr(stage + t.dst), a.meta + t.src, 16);
    }
  });
}

// acc = scale * B_lora[rows of this warp, :] . T[rows of this warp, :]^T, r zero-padded to 16.
// Strides are arbitrary, so the fragments are gathered element by element from global memory.
template <typename T, class Cfg>
__device__ __forceinline__ void low_rank(const MmArgs& a, float (&acc)[2][Cfg::kMI][4], int64_t wn0, int64_t wm0,
                                         int lane) {
  for (int64_t j0 = 0; j0 < a.r; j0 += 16) {
    uint32_t af[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      uint16_t e[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const DensePos p = dense_a_pos(lane, q);
        const int64_t row = wn0 + 16 * i + p.row;
        const int64_t j = j0 + p.col;
        e[q] = (row < a.n && j < a.r) ? ld_elem(a.lora_b + row * a.b_stride0 + j * a.b_stride1) : uint16_t(0);
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        af[i][q] = pack2(e[2 * q], e[2 * q + 1]);
      }
    }
#pragma unroll
    for (int jm = 0; jm < Cfg::kMI; ++jm) {
      if (wm0 + 8 * jm >= a.m) {
        continue;
      }
      uint16_t e[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const DensePos p = dense_b_pos(lane, q);
        const int64_t row = wm0 + 8 * jm + p.row;
        const int64_t j = j0 + p.col;
        e[q] = (row < a.m && j < a.r) ? ld_elem(a.lora_t + row * a.t_stride0 + j * a.t_stride1) : uint16_t(0);
      }
      const uint32_t bf[2] = {pack2(e[0], e[1]), pack2(e[2], e[3])};
      mma_dense<T>(acc[0][jm], af[0], bf);
      mma_dense<T>(acc[1][jm], af[1], bf);
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int jm = 0; jm < Cfg::kMI; ++jm) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        acc[i][jm][c] *= a.scale;
      }
    }
  }
}

// The k32 steps of one stage that belong to this warp.
template <typename T, class Cfg>
__device__ __forceinline__ void compute_stage(const MmArgs& a, const unsigned char* stage, float (&acc)[2][Cfg::kMI][4],
                                              const WarpCoord& w, int64_t kt, int64_t m_left, int lane) {
#pragma unroll
  for (int ss = 0; ss < Cfg::kSteps / Cfg::kWarpsK; ++ss) {
    const int s = w.k + ss * Cfg::kWarpsK;
    if (kt * Cfg::BK + s * kStepK < a.k) {
      const uint32_t e = *reinterpret_cast<const uint32_t*>(stage + meta_smem_offset<Cfg>(w.n, s) + 4 * lane);
      uint32_t af[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const SmemPos p = a_ldmatrix_src(lane, kBlockRows * w.n + 16 * i, s);
        const uint32_t addr = ptx::smem_addr(stage + val_smem_offset<Cfg>(p.row, p.chunk));
        ptx::ldmatrix_sync_aligned_m8n8_x4_shared_b16(af[i], addr);
      }
#pragma unroll
      for (int jm = 0; jm < Cfg::kMI; ++jm) {
        if (8 * jm < m_left) {
          uint32_t bf[4];
          const SmemPos p = b_ldmatrix_src(lane, Cfg::kWarpM * w.m + 8 * jm, s);
          const uint32_t addr = ptx::smem_addr(stage + x_smem_offset<Cfg>(p.row, p.chunk));
          ptx::ldmatrix_sync_aligned_m8n8_x4_shared_b16(bf, addr);
          mma_sp<T, 0>(acc[0][jm], af[0], bf, e);
          mma_sp<T, 1>(acc[1][jm], af[1], bf, e);
        }
      }
    }
  }
}

template <typename T, class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) sparse24_mm_kernel(const MmArgs a) {
  PERFKERN_DYNAMIC_SMEM(uint4, smem_u4);
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_u4);
  const int lane = threadIdx.x & 31;
  const WarpCoord w = warp_coord<Cfg>(threadIdx.x >> 5);
  const TileCoord tile = tile_coord(blockIdx.x, a.tiles_n, a.tiles_m);
  const int64_t n0 = tile.n * Cfg::BN;
  const int64_t m0 = tile.m * Cfg::BM;
  const int64_t wn0 = n0 + kBlockRows * w.n;
  const int64_t wm0 = m0 + Cfg::kWarpM * w.m;
  const int64_t k_tiles = (a.k + Cfg::BK - 1) / Cfg::BK;
  // Warps whose weight rows all lie past N issue no mma; their (zero) results are never stored.
  const bool active = wn0 < a.n;
  const int64_t m_left = a.m - wm0;

#pragma unroll
  for (int s = 0; s < Cfg::kStages - 1; ++s) {
    if (s < k_tiles) {
      load_stage<Cfg>(a, smem + s * Cfg::kStageBytes, n0, m0, s);
    }
    ptx::cp_async_commit_group();
  }

  float acc[2][Cfg::kMI][4];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int jm = 0; jm < Cfg::kMI; ++jm) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        acc[i][jm][c] = 0.0f;
      }
    }
  }
  // Overlaps the prologue's loads.
  if (active && w.k == 0 && a.r > 0) {
    low_rank<T, Cfg>(a, acc, wn0, wm0, lane);
  }

  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    ptx::cp_async_wait_group<Cfg::kStages - 2>();
    __syncthreads();
    // The stage refilled here was consumed in the previous iteration, before the barrier.
    const int64_t next = kt + Cfg::kStages - 1;
    if (next < k_tiles) {
      load_stage<Cfg>(a, smem + (next % Cfg::kStages) * Cfg::kStageBytes, n0, m0, next);
    }
    ptx::cp_async_commit_group();
    if (active) {
      compute_stage<T, Cfg>(a, smem + (kt % Cfg::kStages) * Cfg::kStageBytes, acc, w, kt, m_left, lane);
    }
  }
  ptx::cp_async_wait_group<0>();
  __syncthreads();

  if constexpr (Cfg::kWarpsK > 1) {
    float* red = reinterpret_cast<float*>(smem);
    constexpr int kSlice = Cfg::kWarpsN * Cfg::kWarpsM * Cfg::kAcc * 32;
    if (w.k > 0) {
      float* dst = red + (w.k - 1) * kSlice + w.nm * Cfg::kAcc * 32 + lane;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int jm = 0; jm < Cfg::kMI; ++jm) {
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            dst[((i * Cfg::kMI + jm) * 4 + c) * 32] = acc[i][jm][c];
          }
        }
      }
    }
    __syncthreads();
    if (w.k == 0) {
#pragma unroll
      for (int h = 0; h < Cfg::kWarpsK - 1; ++h) {
        const float* src = red + h * kSlice + w.nm * Cfg::kAcc * 32 + lane;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
          for (int jm = 0; jm < Cfg::kMI; ++jm) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
              acc[i][jm][c] += src[((i * Cfg::kMI + jm) * 4 + c) * 32];
            }
          }
        }
      }
    }
  }

  // Output tile [BM][BN] staged in shared memory (past the partial sums), then stored along N.
  uint16_t* stg = reinterpret_cast<uint16_t*>(smem + Cfg::kRedBytes);
  if (w.k == 0) {
    float bias[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    if (a.bias != nullptr) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t n = wn0 + 16 * i + acc_pos(lane, 2 * h).n;
          if (n < a.n) {
            bias[i][h] = to_float<T>(ld_elem(a.bias + n * a.bias_stride));
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int jm = 0; jm < Cfg::kMI; ++jm) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const AccPos p = acc_pos(lane, c);
          const int n_loc = kBlockRows * w.n + 16 * i + p.n;
          const int m_loc = Cfg::kWarpM * w.m + 8 * jm + p.m;
          stg[m_loc * Cfg::kStgPitch + n_loc] = from_float<T>(acc[i][jm][c] + bias[i][c >> 1]);
        }
      }
    }
  }
  __syncthreads();
  for (int v = threadIdx.x; v < Cfg::BM * (Cfg::BN / 8); v += Cfg::kThreads) {
    const SmemPos p = out_store_chunk<Cfg>(v);
    const int64_t m = m0 + p.row;
    const int64_t n = n0 + 8 * p.chunk;
    if (m >= a.m || n >= a.n) {
      continue;
    }
    const uint16_t* src = stg + p.row * Cfg::kStgPitch + 8 * p.chunk;
    uint16_t* dst = a.out + m * a.out_row_stride + n;
    if (a.out_vec && n + 8 <= a.n) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int q = 0; q < 8 && n + q < a.n; ++q) {
        dst[q] = src[q];
      }
    }
  }
}

// Launches `kernel` on one CTA per BN x BM output tile of Cfg, with Cfg::kSmemBytes of dynamic shared memory.
template <class Cfg, class Kernel>
perfkern_status_t launch_output_tiles(Kernel kernel, MmArgs a, cudaStream_t stream, const char* name) {
  a.tiles_n = (a.n + Cfg::BN - 1) / Cfg::BN;
  a.tiles_m = (a.m + Cfg::BM - 1) / Cfg::BM;
  const int64_t tiles = a.tiles_n * a.tiles_m;
  if (tiles > INT32_MAX) {
    return detail::fail(PERFKERN_ERROR_INVALID_VALUE, "m, n: expected at most 2^31 - 1 output tiles of " +
                                                          std::to_string(Cfg::BM) + " x " + std::to_string(Cfg::BN) +
                                                          ", got " + std::to_string(tiles));
  }
  return detail::launch(name, kernel, static_cast<unsigned int>(tiles), Cfg::kThreads, Cfg::kSmemBytes, stream, a);
}

template <typename T, class Cfg>
perfkern_status_t launch_tiles(const MmArgs& a, cudaStream_t stream) {
  return launch_output_tiles<Cfg>(sparse24_mm_kernel<T, Cfg>, a, stream, "sparse24 mm kernel");
}

template <typename T>
perfkern_status_t launch_mm(const MmArgs& a, cudaStream_t stream) {
  if (a.m <= DecodeTiles::BM) {
    return launch_tiles<T, DecodeTiles>(a, stream);
  }
  if (a.m <= SmallTiles::BM) {
    return launch_tiles<T, SmallTiles>(a, stream);
  }
  return launch_tiles<T, LargeTiles>(a, stream);
}

#endif  // PERFKERN_DEVICE_CODE

// One translation unit per dtype (mm_f16.cu, mm_bf16.cu), so that nvcc builds them in parallel.
perfkern_status_t launch_mm_f16(const MmArgs& a, cudaStream_t stream);
perfkern_status_t launch_mm_bf16(const MmArgs& a, cudaStream_t stream);

}  // namespace mma
}  // namespace sparse24
}  // namespace perfkern

#endif  // PERFKERN_SPARSE24_MM_KERNEL_CUH_
