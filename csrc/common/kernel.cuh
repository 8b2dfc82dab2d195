// How a kernel of the core is written so that one source builds for the GPU (nvcc) and for the emulator
// (the host compiler with PERFKERN_EMULATE, csrc/emu), see csrc/README.md:
//   - device code sits under `#if PERFKERN_DEVICE_CODE` (never `#ifdef __CUDACC__`), device-only paths of
//     __host__ __device__ functions under `#if PERFKERN_ON_DEVICE` (never `#ifdef __CUDA_ARCH__`), sm_90a-only
//     code under `#if PERFKERN_ARCH_SM90A`;
//   - dynamic shared memory is declared with PERFKERN_DYNAMIC_SMEM(type, name);
//   - kernels are launched with detail::launch(...), never with <<<...>>>;
//   - inline PTX lives in common/ptx.cuh only.
#ifndef PERFKERN_COMMON_KERNEL_CUH_
#define PERFKERN_COMMON_KERNEL_CUH_

#include <cstddef>
#include <string>
#include <utility>

#include <cuda_runtime.h>

#include "common/cuda_internal.h"

// Kernels and __device__ functions are compiled: by nvcc (both of its passes), or by the host compiler in the
// emulated build.
#if defined(__CUDACC__) || defined(PERFKERN_EMULATE)
#define PERFKERN_DEVICE_CODE 1
#else
#define PERFKERN_DEVICE_CODE 0
#endif

// The code being compiled runs on a device: nvcc's device pass, or the emulated device. The host pass of a
// __host__ __device__ function (host tools and checks that call it directly) takes the other branch.
#if defined(__CUDA_ARCH__) || defined(PERFKERN_EMULATE)
#define PERFKERN_ON_DEVICE 1
#else
#define PERFKERN_ON_DEVICE 0
#endif

// sm_90a features (wgmma, setmaxnreg, fence.proxy.async): nvcc's sm_90a pass, or the emulator, which checks at
// run time that its device is sm_90 (PERFKERN_EMULATE_SM).
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)) || \
    defined(PERFKERN_EMULATE)
#define PERFKERN_ARCH_SM90A 1
#else
#define PERFKERN_ARCH_SM90A 0
#endif

// `type* name`: the block's dynamic shared memory (launch's smem_bytes), declared inside a kernel.
#ifdef PERFKERN_EMULATE
#define PERFKERN_DYNAMIC_SMEM(type, name) type* const name = ::perfkern::emu::dynamic_smem<type>()
#else
#define PERFKERN_DYNAMIC_SMEM(type, name) extern __shared__ type name[]
#endif

namespace perfkern {
namespace detail {

#if PERFKERN_DEVICE_CODE

// Dynamic shared memory above this needs an opt-in per kernel (cudaFuncAttributeMaxDynamicSharedMemorySize).
constexpr size_t kDefaultDynamicSmem = 48 * 1024;

// kernel<<<grid, block, smem_bytes, stream>>>(args...), opting in to more than 48 KiB of dynamic shared memory
// where asked, then checks the launch; `name` names the kernel in errors. In the emulated build the kernel runs
// on the CPU before this returns.
template <typename... Params, typename... Args>
perfkern_status_t launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                         cudaStream_t stream, Args&&... args) {
  if (smem_bytes > kDefaultDynamicSmem) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes));
    if (err != cudaSuccess) {
      const std::string what = std::string("cudaFuncSetAttribute(") + name + ", max dynamic shared memory)";
      return cuda_fail(err, what.c_str());
    }
  }
#ifdef PERFKERN_EMULATE
  ::perfkern::emu::launch(name, kernel, grid, block, smem_bytes, stream, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, smem_bytes, stream>>>(std::forward<Args>(args)...);
#endif
  return check_launch(name);
}

#endif  // PERFKERN_DEVICE_CODE

}  // namespace detail
}  // namespace perfkern

#endif  // PERFKERN_COMMON_KERNEL_CUH_
