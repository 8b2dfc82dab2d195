#include "sparse24/weight_grad.cuh"

namespace perfkern {
namespace sparse24 {
namespace wgrad {

perfkern_status_t launch_f32(const Args<float>& a, int sms, cudaStream_t stream) {
  return launch(a, sms, stream);
}

}  // namespace wgrad
}  // namespace sparse24
}  // namespace perfkern
