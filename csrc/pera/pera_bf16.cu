#include "pera/pera.cuh"

namespace perfkern {
namespace pera {

perfkern_status_t forward_bf16(const Args<__nv_bfloat16>& a, cudaStream_t stream) { return forward(a, stream); }

perfkern_status_t delta_weight_bf16(const Args<__nv_bfloat16>& a, cudaStream_t stream) {
  return delta_weight(a, stream);
}

perfkern_status_t backward_bf16(const Args<__nv_bfloat16>& a, const BackwardWork& w, cudaStream_t stream) {
  return backward(a, w, stream);
}

}  // namespace pera
}  // namespace perfkern
