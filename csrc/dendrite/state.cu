// perfkern_dendrite_state_update: one batch's statistics folded into the running (and epoch) statistics of a
// dendrite phase, in place, the semantics of perfkern.dendrites.CorrelationState.fold term for term (the same
// mixture formulas, the same order of operations, the same rule that an entry whose merged value is not finite
// keeps its old one). One thread owns one (layer, neuron): it reads E's old statistics before any of its
// candidates' covariances needs them and writes them last, so no other thread ever sees a half-updated neuron.
#include <cstdint>
#include <string>

#include "common/cuda_internal.h"
#include "common/kernel.cuh"
#include "dendrite/dendrite.cuh"
#include "perfkern/perfkern.h"

namespace perfkern {
namespace dendrite {
namespace {

struct StateArgs {
  perfkern_dendrite_moments_t batch;
  perfkern_dendrite_moments_t running;
  perfkern_dendrite_moments_t epoch;
  float* running_score;
  float f_running;
  float f_epoch;
  bool has_epoch;
  int64_t layers;
  int64_t c;
  int64_t n;
  perfkern_dendrite_mode_t mode;
};

#if PERFKERN_DEVICE_CODE

__device__ __forceinline__ float keep_finite(float merged, float old) { return finite(merged) ? merged : old; }

// Merges the batch into the set `s` (weight f for the batch) at neuron (layer, nn); returns E's new variance.
__device__ __forceinline__ float fold(const StateArgs& a, const perfkern_dendrite_moments_t& s, float f, int64_t layer,
                                      int64_t nn) {
  const perfkern_dendrite_moments_t& b = a.batch;
  const float keep = 1.0f - f;
  const float spread = f * keep;
  const int64_t at_n = layer * a.n + nn;
  const float ea = s.e_mean[at_n];
  const float d_e = b.e_mean[at_n] - ea;
  for (int64_t c = 0; c < a.c; ++c) {
    const int64_t at = (layer * a.c + c) * a.n + nn;
    const float va = s.v_mean[at];
    const float d_v = b.v_mean[at] - va;
    const float v_mean = va + f * d_v;
    const float cov = keep * s.cov[at] + f * b.cov[at] + spread * d_v * d_e;
    const float v_var = keep * s.v_var[at] + f * b.v_var[at] + spread * d_v * d_v;
    s.v_mean[at] = keep_finite(v_mean, va);
    s.cov[at] = keep_finite(cov, s.cov[at]);
    s.v_var[at] = keep_finite(v_var, s.v_var[at]);
  }
  const float e_mean = ea + f * d_e;
  const float e_var = keep * s.e_var[at_n] + f * b.e_var[at_n] + spread * (d_e * d_e);
  s.e_mean[at_n] = keep_finite(e_mean, ea);
  s.e_var[at_n] = keep_finite(e_var, s.e_var[at_n]);
  return s.e_var[at_n];
}

__global__ void __launch_bounds__(kThreads) state_update_kernel(const StateArgs a) {
  const int64_t total = a.layers * a.n;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; item < total;
       item += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t layer = item / a.n;
    const int64_t nn = item % a.n;
    const float e_var = fold(a, a.running, a.f_running, layer, nn);
    if (a.has_epoch) {
      fold(a, a.epoch, a.f_epoch, layer, nn);
    }
    if (a.running_score != nullptr) {
      for (int64_t c = 0; c < a.c; ++c) {
        const int64_t at = (layer * a.c + c) * a.n + nn;
        a.running_score[at] = score(a.running.cov[at], a.running.v_var[at], e_var, a.mode);
      }
    }
  }
}

#endif  // PERFKERN_DEVICE_CODE

perfkern_status_t check_moments(const perfkern_dendrite_moments_t& m, const char* name) {
  using namespace perfkern::detail;
  const std::string s(name);
  PERFKERN_RETURN_IF_ERROR(check_non_null(m.v_mean, (s + ".v_mean").c_str()));
  PERFKERN_RETURN_IF_ERROR(check_non_null(m.cov, (s + ".cov").c_str()));
  PERFKERN_RETURN_IF_ERROR(check_non_null(m.v_var, (s + ".v_var").c_str()));
  PERFKERN_RETURN_IF_ERROR(check_non_null(m.e_mean, (s + ".e_mean").c_str()));
  PERFKERN_RETURN_IF_ERROR(check_non_null(m.e_var, (s + ".e_var").c_str()));
  if (!(m.count >= 0.0)) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, s + ".count: expected >= 0, got " + std::to_string(m.count));
  }
  return PERFKERN_SUCCESS;
}

}  // namespace
}  // namespace dendrite
}  // namespace perfkern

extern "C" perfkern_status_t perfkern_dendrite_state_update(const perfkern_dendrite_state_update_params_t* params,
                                                            cudaStream_t stream) {
  using namespace perfkern::detail;
  namespace dd = perfkern::dendrite;
  PERFKERN_RETURN_IF_ERROR(check_params_ptr(params));
  const perfkern_dendrite_state_update_params_t& p = *params;
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.layers, "layers"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.c, "c"));
  PERFKERN_RETURN_IF_ERROR(check_non_negative(p.n, "n"));
  if (p.batch_number < 1) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "batch_number: expected >= 1, got " + std::to_string(p.batch_number));
  }
  if (p.window < 1 || !(p.beta >= 0.0 && p.beta < 1.0)) {
    return fail(PERFKERN_ERROR_INVALID_VALUE, "window, beta: expected window >= 1 and beta in [0, 1), got window=" +
                                                  std::to_string(p.window) + ", beta=" + std::to_string(p.beta));
  }
  if (p.mode != PERFKERN_DENDRITE_COVARIANCE && p.mode != PERFKERN_DENDRITE_PEARSON) {
    return fail(PERFKERN_ERROR_INVALID_VALUE,
                "mode: expected 0 (COVARIANCE) or 1 (PEARSON), got " + std::to_string(static_cast<int>(p.mode)));
  }
  PERFKERN_RETURN_IF_ERROR(check_device_ordinal(p.device));
  if (p.layers == 0 || p.n == 0) {
    return PERFKERN_SUCCESS;
  }
  PERFKERN_RETURN_IF_ERROR(dd::check_moments(p.batch, "batch"));
  PERFKERN_RETURN_IF_ERROR(dd::check_moments(p.running, "running"));
  const bool has_epoch = p.epoch.v_mean != nullptr || p.epoch.cov != nullptr || p.epoch.v_var != nullptr ||
                         p.epoch.e_mean != nullptr || p.epoch.e_var != nullptr;
  if (has_epoch) {
    PERFKERN_RETURN_IF_ERROR(dd::check_moments(p.epoch, "epoch"));
  }
  DeviceGuard guard(p.device);
  PERFKERN_RETURN_IF_ERROR(guard.status());
  dd::StateArgs a{};
  a.batch = p.batch;
  a.running = p.running;
  a.epoch = p.epoch;
  a.running_score = p.running_score;
  auto cumulative = [&](double count) {
    const double total = count + p.batch.count;
    return static_cast<float>(p.batch.count / (total > 1.0 ? total : 1.0));
  };
  a.f_running = p.batch_number <= p.window ? cumulative(p.running.count) : static_cast<float>(1.0 - p.beta);
  a.f_epoch = cumulative(p.epoch.count);
  if (p.batch.count == 0.0) {
    // A batch of no tokens merges with weight 0: every entry stays as it is (1 * x + 0 * y, or the old value
    // where y is not finite), and only the score is written.
    a.f_running = a.f_epoch = 0.0f;
  }
  a.has_epoch = has_epoch;
  a.layers = p.layers;
  a.c = p.c;
  a.n = p.n;
  a.mode = p.mode;
  unsigned int blocks = 0;
  PERFKERN_RETURN_IF_ERROR(grid_size(p.device, p.layers * p.n, dd::kThreads, &blocks));
  return perfkern::detail::launch("dendrite state_update kernel", dd::state_update_kernel, blocks, dd::kThreads, 0,
                                  stream, a);
}
