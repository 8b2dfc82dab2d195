#include "pera/pera.cuh"

namespace perfkern {
namespace pera {

perfkern_status_t forward_f16(const Args<__half>& a, cudaStream_t stream) { return forward(a, stream); }

perfkern_status_t delta_weight_f16(const Args<__half>& a, cudaStream_t stream) {
  return delta_weight(a, stream);
}

perfkern_status_t backward_f16(const Args<__half>& a, const BackwardWork& w, cudaStream_t stream) {
  return backward(a, w, stream);
}

}  // namespace pera
}  // namespace perfkern
