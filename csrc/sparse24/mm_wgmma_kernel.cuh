// The Hopper (sm_90a) 2:4 sparse GEMM with a fused low-rank term, on wgmma.mma_async.sp:
//   out[m, n] = sum_k x[m, k] Ws[n, k] + bias[n] + scale * sum_j T[m, j] B[n, j]
// Same contract and metadata layout as the mma.sp kernel (mm_kernel.cuh); layouts in wgmma_layout.cuh.
// Each CTA owns a BN x BM tile of out^T; each of its consumer warpgroups issues m64nBMk32 sparse
// wgmma with both operands read from 128-byte-swizzled shared memory through descriptors and the
// metadata in a register. Every thread streams the tiles with cp.async, STAGES deep; the tensor cores
// keep one stage's group of wgmma in flight while the next is issued. After the K loop the low-rank
// term is added into the same fp32 accumulators (mma.sync m16n8k16, whose fragments coincide with
// wgmma's accumulator layout), then bias in the epilogue. No M x N intermediate.
#ifndef PERFKERN_SPARSE24_MM_WGMMA_KERNEL_CUH_
#define PERFKERN_SPARSE24_MM_WGMMA_KERNEL_CUH_

#include "common/kernel.cuh"
#include "common/ptx.cuh"
#include "sparse24/mm_kernel.cuh"
#include "sparse24/wgmma_layout.cuh"

namespace perfkern {
namespace sparse24 {
namespace wgmma {

using mma::MmArgs;

#if PERFKERN_DEVICE_CODE

// The instructions below exist only in the sm_90a target; other targets compile an empty kernel that
// the launcher never starts (it checks the device and the binary it would run).
#if PERFKERN_ARCH_SM90A
#define PERFKERN_WGMMA_ENABLED 1
#endif

#ifdef PERFKERN_WGMMA_ENABLED

// d (64 x N, fp32) += A (64 x 32, 2:4, shared memory) * B (32 x N, shared memory); both K-major,
// metadata e with sparsity selector 0; the accumulators are always read (scale-d = 1).
template <typename T, int N>
__device__ __forceinline__ void wgmma_sp(float (&d)[N / 2], uint64_t a_desc, uint64_t b_desc, uint32_t e) {
  static_assert(N == 64 || N == 128, "instantiated for BM = 64 and 128");
  if constexpr (N == 64) {
    if constexpr (std::is_same<T, __half>::value) {
      ptx::wgmma_mma_async_sp_m64n64k32_f32_f16(d, a_desc, b_desc, e, 1u);
    } else {
      ptx::wgmma_mma_async_sp_m64n64k32_f32_bf16(d, a_desc, b_desc, e, 1u);
    }
  } else {
    if constexpr (std::is_same<T, __half>::value) {
      ptx::wgmma_mma_async_sp_m64n128k32_f32_f16(d, a_desc, b_desc, e, 1u);
    } else {
      ptx::wgmma_mma_async_sp_m64n128k32_f32_bf16(d, a_desc, b_desc, e, 1u);
    }
  }
}

template <class Cfg>
__device__ __forceinline__ void load_stage(const MmArgs& a, unsigned char* stage, int64_t n0, int64_t m0, int64_t kt) {
  using L = StageLoads<Cfg>;
  mma::for_each_task<L::kVal, Cfg::kThreads>([&](int v) {
    mma::load_chunk(stage, values_load<Cfg>(v, n0, kt, a.n, a.k, a.values_row_stride), a.values, a.values_vec);
  });
  mma::for_each_task<L::kX, Cfg::kThreads>([&](int v) {
    mma::load_chunk(stage, x_load<Cfg>(v, m0, kt, a.m, a.k, a.x_row_stride), a.x, a.x_vec);
  });
  mma::for_each_task<L::kMeta, Cfg::kThreads>([&](int v) {
    const LoadTask t = meta_load<Cfg>(v, n0, kt, a.n, a.k);
    if (t.valid) {
      ptx::cp_async_cg_shared_global_16(ptx::smem_addr(stage + t.dst), a.meta + t.src, 16);
    } else {
      *reinterpret_cast<uint4*>(stage + t.dst) =
          make_uint4(kPadMetaWord, kPadMetaWord, kPadMetaWord, kPadMetaWord);
    }
  });
}

// acc += scale * B_lora[16 rows of this warp, :] . T[BM rows, :]^T in the accumulator layout
// (acc_pos), r zero-padded to a multiple of 16. Runs after the wgmma pipeline has drained: ptxas
// serialises every wgmma of a kernel whose accumulators other instructions define inside the
// pipeline. Strides are arbitrary: fragments are gathered element by element.
template <typename T, class Cfg>
__device__ __forceinline__ void add_low_rank(const MmArgs& a, float (&acc)[Cfg::kAcc], int64_t wn0, int64_t m0,
                                             int lane) {
  constexpr int kTiles = Cfg::BM / 8;
  for (int64_t j0 = 0; j0 < a.r; j0 += 16) {
    uint32_t af[4];
    {
      uint16_t e[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const mma::DensePos p = mma::dense_a_pos(lane, q);
        const int64_t row = wn0 + p.row;
        const int64_t j = j0 + p.col;
        e[q] = (row < a.n && j < a.r) ? mma::ld_elem(a.lora_b + row * a.b_stride0 + j * a.b_stride1) : uint16_t(0);
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        af[q] = mma::pack2(e[2 * q], e[2 * q + 1]);
      }
    }
#pragma unroll
    for (int jm = 0; jm < kTiles; ++jm) {
      if (m0 + 8 * jm >= a.m) {
        continue;
      }
      uint16_t e[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const mma::DensePos p = mma::dense_b_pos(lane, q);
        const int64_t row = m0 + 8 * jm + p.row;
        const int64_t j = j0 + p.col;
        e[q] = (row < a.m && j < a.r) ? mma::ld_elem(a.lora_t + row * a.t_stride0 + j * a.t_stride1) : uint16_t(0);
      }
      const uint32_t bf[2] = {mma::pack2(e[0], e[1]), mma::pack2(e[2], e[3])};
      float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      mma::mma_dense<T>(c, af, bf);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        acc[4 * jm + q] += a.scale * c[q];
      }
    }
  }
}

#endif  // PERFKERN_WGMMA_ENABLED

template <typename T, class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1) sparse24_mm_wgmma_kernel(const MmArgs a) {
#ifdef PERFKERN_WGMMA_ENABLED
  PERFKERN_DYNAMIC_SMEM(uint4, smem_u4);
  // Swizzle atoms must be 1024-byte aligned in the shared window; kSmemBytes has room to align.
  const uint32_t raw = ptx::smem_addr(smem_u4);
  const uint32_t aligned = (raw + kAtomBytes - 1) & ~static_cast<uint32_t>(kAtomBytes - 1);
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_u4) + (aligned - raw);
  const uint32_t smem_base = ptx::smem_addr(smem);

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int wg = warp >> 2;
  const int warp_in_wg = warp & 3;
  const mma::TileCoord tile = mma::tile_coord(blockIdx.x, a.tiles_n, a.tiles_m);
  const int64_t n0 = tile.n * Cfg::BN;
  const int64_t m0 = tile.m * Cfg::BM;
  const int64_t wg_n0 = n0 + kWarpgroupRows * wg;
  const int64_t k_tiles = (a.k + Cfg::BK - 1) / Cfg::BK;
  // A warpgroup whose 64 weight rows all lie past N multiplies padding; its results are never stored.
  const bool active = wg_n0 < a.n;
  const MetaSlot slot = meta_slot(wg, warp_in_wg, lane);
  constexpr int kAhead = Cfg::kStages - 2;

#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < k_tiles) {
      wgmma::load_stage<Cfg>(a, smem + s * Cfg::kStageBytes, n0, m0, s);
    }
    ptx::cp_async_commit_group();
  }

  float acc[Cfg::kAcc];
#pragma unroll
  for (int j = 0; j < Cfg::kAcc; ++j) {
    acc[j] = 0.0f;
  }

  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    // Stage kt has landed (this thread's copies), is visible to the tensor cores, and, after the
    // barrier, everyone's copies are. The barrier also follows every warpgroup's wait for the wgmma
    // of stage kt - 2, the stage that the refill below overwrites.
    ptx::cp_async_wait_group<kAhead - 1>();
    ptx::fence_proxy_async_shared_cta();
    __syncthreads();
    const int64_t next = kt + kAhead;
    if (next < k_tiles) {
      wgmma::load_stage<Cfg>(a, smem + (next % Cfg::kStages) * Cfg::kStageBytes, n0, m0, next);
    }
    ptx::cp_async_commit_group();
    // Issued unconditionally (a branch around wgmma makes ptxas serialise them): the k32 steps past K,
    // and the rows past N, hold zero values and x and padding metadata, so they add exact zeros.
    const int stage_off = static_cast<int>(kt % Cfg::kStages) * Cfg::kStageBytes;
    uint32_t e[Cfg::kSteps];
#pragma unroll
    for (int s = 0; s < Cfg::kSteps; ++s) {
      e[s] = *reinterpret_cast<const uint32_t*>(smem + stage_off + meta_smem_offset<Cfg>(slot.block, s) +
                                                4 * slot.word);
    }
    ptx::fence_operands(acc);
    ptx::wgmma_fence_sync_aligned();
#pragma unroll
    for (int s = 0; s < Cfg::kSteps; ++s) {
      const uint64_t a_desc = sw128_desc(smem_base + stage_off + a_desc_offset<Cfg>(wg, s));
      const uint64_t b_desc = sw128_desc(smem_base + stage_off + b_desc_offset<Cfg>(s));
      wgmma_sp<T, Cfg::BM>(acc, a_desc, b_desc, e[s]);
    }
    ptx::wgmma_commit_group_sync_aligned();
    ptx::wgmma_wait_group_sync_aligned<1>();
    ptx::fence_operands(acc);
  }
  ptx::wgmma_wait_group_sync_aligned<0>();
  ptx::fence_operands(acc);
  if (active && a.r > 0) {
    wgmma::add_low_rank<T, Cfg>(a, acc, wg_n0 + 16 * warp_in_wg, m0, lane);
  }
  ptx::cp_async_wait_group<0>();
  __syncthreads();

  // Output tile [BM][BN] staged in shared memory, then stored along N with 16-byte stores.
  uint16_t* stg = reinterpret_cast<uint16_t*>(smem);
  if (active) {
    float bias[2] = {0.0f, 0.0f};
    if (a.bias != nullptr) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t n = wg_n0 + acc_pos(warp_in_wg, lane, 2 * h).n;
        if (n < a.n) {
          bias[h] = mma::to_float<T>(mma::ld_elem(a.bias + n * a.bias_stride));
        }
      }
    }
#pragma unroll
    for (int j = 0; j < Cfg::kAcc; ++j) {
      const AccPos p = acc_pos(warp_in_wg, lane, j);
      stg[p.m * Cfg::kStgPitch + kWarpgroupRows * wg + p.n] = mma::from_float<T>(acc[j] + bias[(j & 3) >> 1]);
    }
  }
  __syncthreads();
  for (int v = threadIdx.x; v < Cfg::BM * (Cfg::BN / 8); v += Cfg::kThreads) {
    const int row = v / (Cfg::BN / 8);
    const int chunk = v % (Cfg::BN / 8);
    const int64_t m = m0 + row;
    const int64_t n = n0 + 8 * chunk;
    if (m >= a.m || n >= a.n) {
      continue;
    }
    const uint16_t* src = stg + row * Cfg::kStgPitch + 8 * chunk;
    uint16_t* dst = a.out + m * a.out_row_stride + n;
    if (a.out_vec && n + 8 <= a.n) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int q = 0; q < 8 && n + q < a.n; ++q) {
        dst[q] = src[q];
      }
    }
  }
#endif  // PERFKERN_WGMMA_ENABLED
}

// The tilings, by M: 64 x 64 tiles (one warpgroup) up to M = 64 so that more CTAs share the weight;
// 128 x 128 (two warpgroups, 64 fp32 accumulators per thread) beyond. 4 stages: two in flight while
// the tensor cores read a third and the fourth drains.
using MediumTiles = TileConfig<1, 64, 4>;
using LargeTiles = TileConfig<2, 128, 4>;

template <typename T, class Cfg>
perfkern_status_t launch_wgmma_tiles(const MmArgs& a, cudaStream_t stream) {
  return mma::launch_output_tiles<Cfg>(sparse24_mm_wgmma_kernel<T, Cfg>, a, stream, "sparse24 wgmma kernel");
}

// Whether the wgmma kernel can run on the current device: an sm_90 device, and the binary it would
// run is the sm_90a one (a build without 90a would JIT the empty kernel from older PTX).
template <typename T>
bool runnable_here() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    return false;
  }
  int major = 0;
  int minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    return false;
  }
  if (major != 9 || minor != 0) {
    return false;
  }
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, sparse24_mm_wgmma_kernel<T, LargeTiles>) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.ptxVersion >= 90 && attr.binaryVersion == 90;
}

template <typename T>
perfkern_status_t launch_wgmma_mm(const MmArgs& a, cudaStream_t stream) {
  if (a.m <= MediumTiles::BM) {
    return launch_wgmma_tiles<T, MediumTiles>(a, stream);
  }
  return launch_wgmma_tiles<T, LargeTiles>(a, stream);
}

#endif  // PERFKERN_DEVICE_CODE

// One translation unit per dtype (mm_wgmma_f16.cu, mm_wgmma_bf16.cu). `runnable` says whether the
// current device can run the kernel (checked once per device by the caller).
perfkern_status_t launch_mm_f16(const MmArgs& a, cudaStream_t stream);
perfkern_status_t launch_mm_bf16(const MmArgs& a, cudaStream_t stream);
bool runnable_f16();
bool runnable_bf16();

}  // namespace wgmma
}  // namespace sparse24
}  // namespace perfkern

#endif  // PERFKERN_SPARSE24_MM_WGMMA_KERNEL_CUH_
