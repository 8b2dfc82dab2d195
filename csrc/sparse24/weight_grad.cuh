// The sparse weight gradient straight into the compressed layout (DESIGN §3.3):
//   out[n, 2g + s] (+)= sum_m dy[m, n] x[m, 4g + idx_s(n, g)]
// The kept columns differ from row to row, so no sparse instruction can skip the dropped half: each CTA computes
// a dense tile of dy^T . x on the tensor cores (fp32 on FFMA) at full rate, stages it in shared memory and
// gathers the kept half into the [n, k/2] layout, 16-byte stores, no dense [n, k] intermediate in memory
// (bench/NOTES.md compares this with a CUDA-core kernel computing only the kept half).
#ifndef PERFKERN_SPARSE24_WEIGHT_GRAD_CUH_
#define PERFKERN_SPARSE24_WEIGHT_GRAD_CUH_

#include <cstdint>
#include <string>
#include <type_traits>

#include "common/cuda_internal.h"
#include "common/kernel.cuh"
#include "common/tile_gemm.cuh"
#include "perfkern/perfkern.h"

namespace perfkern {
namespace sparse24 {
namespace wgrad {

template <typename T>
struct Args {
  tile::Matrix<T> dy;  // [m, n]
  tile::Matrix<T> x;   // [m, k]
  const int16_t* meta;
  void* out;
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t meta_row_stride;
  int64_t out_row_stride;
  int64_t tiles_k;
  bool accumulate;
  bool out_f32;  // out is fp32 (else T)
  bool out_vec;  // 16-byte stores of 8 out elements (32 bytes for fp32) are aligned
};

// 128 x 128 output tiles where they fill the GPU, 64 x 64 elsewhere (and for fp32).
using LargeShape = tile::Shape<128, 128, 32, 2, 4>;

#if PERFKERN_DEVICE_CODE

template <typename T, class Math>
__global__ void __launch_bounds__(Math::Shape::kThreads) weight_grad_kernel(const Args<T> a) {
  using S = typename Math::Shape;
  PERFKERN_DYNAMIC_SMEM(uint4, smem_u4);
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_u4);
  const int64_t n0 = static_cast<int64_t>(blockIdx.x / a.tiles_k) * S::BM;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x % a.tiles_k) * S::BN;
  // Operand A (rows n) and B (rows k) are columns of dy and x: the reduction runs down their rows.
  const tile::ColsAlongRows<T> opa{a.dy};
  const tile::ColsAlongRows<T> opb{a.x};
  typename Math::Acc acc;
  Math::zero(acc);
  tile::mainloop<Math>(opa, opb, n0, k0, 0, a.m, smem, acc);
  float* staged = reinterpret_cast<float*>(smem);
  tile::stage_acc<Math>(acc, staged);

  // One item: 16 columns of one row, i.e. one metadata word and 8 outputs.
  constexpr int kPitch = S::BN + 4;
  constexpr int kChunksPerRow = S::BN / 16;
  for (int item = static_cast<int>(threadIdx.x); item < S::BM * kChunksPerRow; item += S::kThreads) {
    const int row = item / kChunksPerRow;
    const int chunk = item % kChunksPerRow;
    const int64_t n = n0 + row;
    const int64_t col = k0 + 16 * chunk;
    if (n >= a.n || col >= a.k) {
      continue;
    }
    const uint32_t meta = static_cast<uint16_t>(__ldg(a.meta + n * a.meta_row_stride + col / 16));
    const float* src = staged + row * kPitch + 16 * chunk;
    float v[8];
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      const uint32_t nib = (meta >> (4 * g)) & 0xfu;
      v[2 * g] = src[4 * g + (nib & 3u)];
      v[2 * g + 1] = src[4 * g + ((nib >> 2) & 3u)];
    }
    const int64_t at = n * a.out_row_stride + col / 2;
    if (a.out_f32) {
      float* dst = static_cast<float*>(a.out) + at;
      if (a.out_vec) {
        float4* d4 = reinterpret_cast<float4*>(dst);
        if (a.accumulate) {
          const float4 lo = d4[0];
          const float4 hi = d4[1];
          v[0] += lo.x, v[1] += lo.y, v[2] += lo.z, v[3] += lo.w, v[4] += hi.x, v[5] += hi.y, v[6] += hi.z,
              v[7] += hi.w;
        }
        d4[0] = make_float4(v[0], v[1], v[2], v[3]);
        d4[1] = make_float4(v[4], v[5], v[6], v[7]);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          dst[e] = a.accumulate ? dst[e] + v[e] : v[e];
        }
      }
    } else {
      uint16_t* dst = static_cast<uint16_t*>(a.out) + at;
      uint16_t bits[8];
      if (a.out_vec) {
        const uint4 old = a.accumulate ? *reinterpret_cast<const uint4*>(dst) : make_uint4(0, 0, 0, 0);
        const uint32_t w[4] = {old.x, old.y, old.z, old.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float prev = a.accumulate ? tile::to_float<T>(static_cast<uint16_t>(w[e / 2] >> (16 * (e % 2)))) : 0.0f;
          bits[e] = tile::from_float<T>(v[e] + prev);
        }
        *reinterpret_cast<uint4*>(dst) = make_uint4(tile::pack2(bits[0], bits[1]), tile::pack2(bits[2], bits[3]),
                                                    tile::pack2(bits[4], bits[5]), tile::pack2(bits[6], bits[7]));
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          dst[e] = tile::from_float<T>(a.accumulate ? tile::to_float<T>(dst[e]) + v[e] : v[e]);
        }
      }
    }
  }
}

template <typename T, class Math>
perfkern_status_t launch_shape(Args<T> a, cudaStream_t stream) {
  using S = typename Math::Shape;
  a.tiles_k = (a.k + S::BN - 1) / S::BN;
  const int64_t tiles = ((a.n + S::BM - 1) / S::BM) * a.tiles_k;
  if (tiles > INT32_MAX) {
    return detail::fail(PERFKERN_ERROR_INVALID_VALUE,
                        "n, k: expected at most 2^31 - 1 output tiles, got " + std::to_string(tiles));
  }
  const size_t pipeline = 2 * static_cast<size_t>(Math::kStageBytes);
  const size_t staging = static_cast<size_t>(S::BM) * (S::BN + 4) * sizeof(float);
  return detail::launch("sparse24 weight_grad kernel", weight_grad_kernel<T, Math>, static_cast<unsigned int>(tiles),
                        S::kThreads, pipeline > staging ? pipeline : staging, stream, a);
}

// sms: the device's multiprocessors, for the choice of tile.
template <typename T>
perfkern_status_t launch(const Args<T>& a, int sms, cudaStream_t stream) {
  using Ops = tile::ColsAlongRows<T>;
  if constexpr (std::is_same<T, float>::value) {
    return launch_shape<T, tile::MathFor<T, Ops, Ops>>(a, stream);
  } else {
    const int64_t large_tiles =
        ((a.n + LargeShape::BM - 1) / LargeShape::BM) * ((a.k + LargeShape::BN - 1) / LargeShape::BN);
    if (large_tiles >= sms) {
      return launch_shape<T, tile::MathFor<T, Ops, Ops, LargeShape>>(a, stream);
    }
    return launch_shape<T, tile::MathFor<T, Ops, Ops>>(a, stream);
  }
}

#endif  // PERFKERN_DEVICE_CODE

// One translation unit per dtype (weight_grad_{f32,f16,bf16}.cu), so that nvcc builds them in parallel.
perfkern_status_t launch_f32(const Args<float>& a, int sms, cudaStream_t stream);
perfkern_status_t launch_f16(const Args<__half>& a, int sms, cudaStream_t stream);
perfkern_status_t launch_bf16(const Args<__nv_bfloat16>& a, int sms, cudaStream_t stream);

}  // namespace wgrad
}  // namespace sparse24
}  // namespace perfkern

#endif  // PERFKERN_SPARSE24_WEIGHT_GRAD_CUH_
