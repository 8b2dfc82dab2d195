#include "sparse24/mm_kernel.cuh"

namespace perfkern {
namespace sparse24 {
namespace mma {

perfkern_status_t launch_mm_f16(const MmArgs& a, cudaStream_t stream) { return launch_mm<__half>(a, stream); }

}  // namespace mma
}  // namespace sparse24
}  // namespace perfkern
