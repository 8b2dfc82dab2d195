#include "sparse24/mm_wgmma_kernel.cuh"

namespace perfkern {
namespace sparse24 {
namespace wgmma {

perfkern_status_t launch_mm_f16(const MmArgs& a, cudaStream_t stream) { return launch_wgmma_mm<__half>(a, stream); }

bool runnable_f16() { return runnable_here<__half>(); }

}  // namespace wgmma
}  // namespace sparse24
}  // namespace perfkern
