#include "sparse24/mm_wgmma_kernel.cuh"

namespace perfkern {
namespace sparse24 {
namespace wgmma {

perfkern_status_t launch_mm_bf16(const MmArgs& a, cudaStream_t stream) {
  return launch_wgmma_mm<__nv_bfloat16>(a, stream);
}

bool runnable_bf16() { return runnable_here<__nv_bfloat16>(); }

}  // namespace wgmma
}  // namespace sparse24
}  // namespace perfkern
