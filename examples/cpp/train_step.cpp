// One training step of a SparseLoRALinear layer with a PERA adapter, through perfkern's public header only,
// checked against a small reference written here from the operators' definitions (in double, from the same
// bf16 inputs). The layer: y = x . Ws^T + s (x . A^T) . B^T, Ws [N, K] 2:4 along K (canonical values + meta),
// A^ / B^ PERA's expanded factors (full mode), bf16 data, fp32 accumulation.
//
//   forward   perfkern_sparse24_meta_to_mma, perfkern_sparse24_mm      y = x . Ws^T
//             perfkern_pera_forward (accumulate)                       y += s (x . A^T) . B^T, Z kept
//   backward  perfkern_sparse24_transpose_prune                        SLoPe's double-pruned copy of Ws
//             perfkern_sparse24_mm                                     dx = dy . Wbwd
//             perfkern_pera_backward (accumulate)                      dx += dZ . A^; dA, dB, dh
//             perfkern_sparse24_weight_grad                            dWs in the compressed layout (fp32)
//   dendrites perfkern_dendrite_correlation                            the layer's candidates against dy
//             perfkern_dendrite_state_update                           the running / epoch statistics
//             perfkern_dendrite_grad (Cascade-Correlation)             the candidates' gradient
//
// Against a CUDA build (PERFKERN_EXAMPLE_CUDA) the buffers are device memory; against the emulated build
// (PERFKERN_EXAMPLE_EMULATED) host memory, the kernels running on the CPU; a build or machine without a device
// reports that it skipped the step.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <perfkern/perfkern.h>
#ifdef PERFKERN_EXAMPLE_CUDA
#include <cuda_runtime.h>
#endif

namespace {

constexpr int64_t kM = 96;   // tokens
constexpr int64_t kK = 128;  // in features
constexpr int64_t kN = 64;   // out features
constexpr int64_t kR = 4;    // adapter rank
constexpr int64_t kPairs = kR * (kR + 1) / 2;
constexpr int64_t kRh = kR + kPairs;
constexpr float kScale = 0.5f;
constexpr int64_t kC = 3;  // dendrite candidates per neuron

bool ok(perfkern_status_t status, const char* what) {
  if (status != PERFKERN_SUCCESS) {
    std::fprintf(stderr, "%s failed: %s: %s\n", what, perfkern_status_string(status), perfkern_last_error());
    return false;
  }
  return true;
}

// ---- memory of the launchers --------------------------------------------------------------------------------

#if defined(PERFKERN_EXAMPLE_CUDA)
bool cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s failed: %s\n", what, cudaGetErrorString(err));
    return false;
  }
  return true;
}
void* device_alloc(size_t bytes) {
  void* p = nullptr;
  return cuda_ok(cudaMalloc(&p, bytes), "cudaMalloc") ? p : nullptr;
}
void device_free(void* p) { cudaFree(p); }
bool to_device(void* dst, const void* src, size_t bytes) {
  return cuda_ok(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
}
bool to_host(void* dst, const void* src, size_t bytes) {
  return cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize") &&
         cuda_ok(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
}
#else
void* device_alloc(size_t bytes) { return std::malloc(bytes); }
void device_free(void* p) { std::free(p); }
bool to_device(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return true;
}
bool to_host(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return true;
}
#endif

// Device buffers freed at the end of the step.
class Buffers {
 public:
  ~Buffers() {
    for (void* p : all_) device_free(p);
  }
  template <typename T>
  T* make(size_t count) {
    void* p = device_alloc(count * sizeof(T) > 0 ? count * sizeof(T) : 16);
    if (p != nullptr) all_.push_back(p);
    return static_cast<T*>(p);
  }
  template <typename T>
  T* upload(const std::vector<T>& host) {
    T* p = make<T>(host.size());
    return p != nullptr && to_device(p, host.data(), host.size() * sizeof(T)) ? p : nullptr;
  }

 private:
  std::vector<void*> all_;
};

template <typename T>
std::vector<T> download(const T* p, size_t count) {
  std::vector<T> host(count);
  if (!to_host(host.data(), p, count * sizeof(T))) host.clear();
  return host;
}

// ---- data -----------------------------------------------------------------------------------------------------

// bf16: the top half of an fp32, rounded to nearest even.
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
double from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Random {
  uint64_t state = 0x853c49e6748fea9bull;
  double uniform() {  // [0, 1)
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(state >> 11) * (1.0 / 9007199254740992.0);
  }
  double normal() { return std::sqrt(-2.0 * std::log(1.0 - uniform())) * std::cos(6.283185307179586 * uniform()); }
};

std::vector<uint16_t> bf16_normal(Random& rng, size_t count, double scale) {
  std::vector<uint16_t> out(count);
  for (auto& v : out) v = to_bf16(static_cast<float>(scale * rng.normal()));
  return out;
}

std::vector<double> widen(const std::vector<uint16_t>& bf) {
  std::vector<double> out(bf.size());
  for (size_t i = 0; i < bf.size(); ++i) out[i] = from_bf16(bf[i]);
  return out;
}

// ---- the reference (double, straight from the definitions) ----------------------------------------------------

// The PERA pairs (i <= j, row-major upper triangle) and the expanded factors.
void pairs(std::vector<int>& pi, std::vector<int>& pj) {
  for (int i = 0; i < kR; ++i)
    for (int j = i; j < kR; ++j) pi.push_back(i), pj.push_back(j);
}

// Top 2 of 4 by magnitude, ties to the lower index: bit e set when entry e is kept.
int keep2(const double* v, int64_t stride) {
  int mask = 0;
  for (int e = 0; e < 4; ++e) {
    int above = 0;
    for (int o = 0; o < 4; ++o) {
      const double a = std::fabs(v[o * stride]), b = std::fabs(v[e * stride]);
      above += (a > b || (a == b && o < e)) ? 1 : 0;
    }
    if (above < 2) mask |= 1 << e;
  }
  return mask;
}

struct Reference {
  std::vector<double> y, dx, dvalues, da, db, dh;
};

Reference reference(const std::vector<double>& x, const std::vector<double>& w, const std::vector<int>& kept,
                    const std::vector<double>& a, const std::vector<double>& b, const std::vector<double>& h,
                    const std::vector<double>& dy) {
  std::vector<int> pi, pj;
  pairs(pi, pj);
  // A^ [R', K], B^ [N, R'] with dA^/dA, dB^/dB taken by hand below.
  std::vector<double> ah(kRh * kK), bh(kN * kRh);
  for (int64_t q = 0; q < kRh; ++q) {
    for (int64_t k = 0; k < kK; ++k)
      ah[q * kK + k] = q < kR ? a[q * kK + k] : h[q - kR] * a[pi[q - kR] * kK + k] * a[pj[q - kR] * kK + k];
    for (int64_t n = 0; n < kN; ++n)
      bh[n * kRh + q] = q < kR ? b[n * kR + q] : b[n * kR + pi[q - kR]] * b[n * kR + pj[q - kR]];
  }
  Reference r;
  std::vector<double> z(kM * kRh, 0.0), dz(kM * kRh, 0.0);
  for (int64_t m = 0; m < kM; ++m)
    for (int64_t q = 0; q < kRh; ++q)
      for (int64_t k = 0; k < kK; ++k) z[m * kRh + q] += x[m * kK + k] * ah[q * kK + k];
  r.y.assign(kM * kN, 0.0);
  for (int64_t m = 0; m < kM; ++m)
    for (int64_t n = 0; n < kN; ++n) {
      double s = 0.0;
      for (int64_t k = 0; k < kK; ++k) s += x[m * kK + k] * w[n * kK + k];
      for (int64_t q = 0; q < kRh; ++q) s += kScale * z[m * kRh + q] * bh[n * kRh + q];
      r.y[m * kN + n] = s;
    }
  // SLoPe's backward copy: Ws pruned again 2:4 along N, by magnitude.
  std::vector<double> wbwd(kN * kK, 0.0);
  for (int64_t k = 0; k < kK; ++k)
    for (int64_t n0 = 0; n0 < kN; n0 += 4) {
      const int mask = keep2(&w[n0 * kK + k], kK);
      for (int e = 0; e < 4; ++e)
        if (mask >> e & 1) wbwd[(n0 + e) * kK + k] = w[(n0 + e) * kK + k];
    }
  for (int64_t m = 0; m < kM; ++m)
    for (int64_t q = 0; q < kRh; ++q)
      for (int64_t n = 0; n < kN; ++n) dz[m * kRh + q] += kScale * dy[m * kN + n] * bh[n * kRh + q];
  r.dx.assign(kM * kK, 0.0);
  for (int64_t m = 0; m < kM; ++m)
    for (int64_t k = 0; k < kK; ++k) {
      double s = 0.0;
      for (int64_t n = 0; n < kN; ++n) s += dy[m * kN + n] * wbwd[n * kK + k];
      for (int64_t q = 0; q < kRh; ++q) s += dz[m * kRh + q] * ah[q * kK + k];
      r.dx[m * kK + k] = s;
    }
  // dWs at the kept positions, in column order of each row.
  for (int64_t n = 0; n < kN; ++n)
    for (int64_t k = 0; k < kK; ++k)
      if (kept[n * kK + k]) {
        double s = 0.0;
        for (int64_t m = 0; m < kM; ++m) s += dy[m * kN + n] * x[m * kK + k];
        r.dvalues.push_back(s);
      }
  // dA^ = dZ^T x, dB^ = s dy^T Z, then the chain rule through the products.
  r.da.assign(kR * kK, 0.0);
  r.db.assign(kN * kR, 0.0);
  r.dh.assign(kPairs, 0.0);
  for (int64_t q = 0; q < kRh; ++q) {
    for (int64_t k = 0; k < kK; ++k) {
      double g = 0.0;
      for (int64_t m = 0; m < kM; ++m) g += dz[m * kRh + q] * x[m * kK + k];
      if (q < kR) {
        r.da[q * kK + k] += g;
      } else {
        const int i = pi[q - kR], j = pj[q - kR];
        r.da[i * kK + k] += g * h[q - kR] * a[j * kK + k];
        r.da[j * kK + k] += g * h[q - kR] * a[i * kK + k];
        r.dh[q - kR] += g * a[i * kK + k] * a[j * kK + k];
      }
    }
    for (int64_t n = 0; n < kN; ++n) {
      double g = 0.0;
      for (int64_t m = 0; m < kM; ++m) g += kScale * dy[m * kN + n] * z[m * kRh + q];
      if (q < kR) {
        r.db[n * kR + q] += g;
      } else {
        const int i = pi[q - kR], j = pj[q - kR];
        r.db[n * kR + i] += g * b[n * kR + j];
        r.db[n * kR + j] += g * b[n * kR + i];
      }
    }
  }
  return r;
}

// Population statistics of V [P, C, N] against E [P, N] (one layer), two-pass, and the Pearson score.
struct Stats {
  std::vector<double> v_mean, cov, v_var, e_mean, e_var;
};

Stats dendrite_stats(const std::vector<float>& v, const std::vector<float>& e, int64_t p) {
  Stats s;
  s.v_mean.assign(kC * kN, 0.0), s.cov = s.v_var = s.v_mean;
  s.e_mean.assign(kN, 0.0), s.e_var = s.e_mean;
  for (int64_t n = 0; n < kN; ++n) {
    for (int64_t t = 0; t < p; ++t) s.e_mean[n] += e[t * kN + n] / static_cast<double>(p);
    for (int64_t t = 0; t < p; ++t) s.e_var[n] += std::pow(e[t * kN + n] - s.e_mean[n], 2) / static_cast<double>(p);
    for (int64_t c = 0; c < kC; ++c) {
      const int64_t at = c * kN + n;
      for (int64_t t = 0; t < p; ++t) s.v_mean[at] += v[(t * kC + c) * kN + n] / static_cast<double>(p);
      for (int64_t t = 0; t < p; ++t) {
        const double dv = v[(t * kC + c) * kN + n] - s.v_mean[at];
        s.v_var[at] += dv * dv / static_cast<double>(p);
        s.cov[at] += dv * (e[t * kN + n] - s.e_mean[n]) / static_cast<double>(p);
      }
    }
  }
  return s;
}

double pearson(double cov, double v_var, double e_var) {
  const double d = std::sqrt(v_var * e_var);
  return d > 0.0 ? cov / d : 0.0;
}

// ---- checks ---------------------------------------------------------------------------------------------------

template <typename Got>
bool close(const char* name, const std::vector<Got>& got, const std::vector<double>& want, double tol,
           double (*value)(Got)) {
  if (got.size() != want.size()) {
    std::fprintf(stderr, "%s: %zu values, expected %zu\n", name, got.size(), want.size());
    return false;
  }
  double scale = 0.0, worst = 0.0;
  size_t at = 0;
  for (double w : want) scale = std::fmax(scale, std::fabs(w));
  scale = scale > 0.0 ? scale : 1.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(value(got[i]) - want[i]);
    if (!(err <= worst)) worst = err, at = i;  // a NaN is the worst
  }
  const bool good = worst <= tol * scale;
  std::printf("  %-28s max |error| %.3g (%.2g of the largest |value| %.3g)%s\n", name, worst, worst / scale, scale,
              good ? "" : "  <-- FAILED");
  if (!good) std::fprintf(stderr, "%s: entry %zu is %g, expected %g\n", name, at, value(got[at]), want[at]);
  return good;
}

double bf16_value(uint16_t b) { return from_bf16(b); }
double f32_value(float f) { return f; }

int train_step() {
  Random rng;
  // The layer: a 2:4 weight (kept values and canonical metadata), the adapter's factors, a batch and dy.
  std::vector<double> w(kN * kK, 0.0);
  std::vector<int> kept(kN * kK, 0);
  std::vector<uint16_t> values;
  std::vector<int16_t> meta(kN * kK / 16, 0);
  for (int64_t n = 0; n < kN; ++n)
    for (int64_t g = 0; g < kK / 4; ++g) {
      const int i0 = static_cast<int>(rng.uniform() * 3.0);
      const int i1 = i0 + 1 + static_cast<int>(rng.uniform() * (3 - i0));
      meta[n * (kK / 16) + g / 4] |= static_cast<int16_t>((i0 | (i1 << 2)) << (4 * (g % 4)));
      for (int idx : {i0, i1}) {
        const uint16_t v = to_bf16(static_cast<float>(rng.normal() / std::sqrt(static_cast<double>(kK))));
        values.push_back(v);
        w[n * kK + 4 * g + idx] = from_bf16(v);
        kept[n * kK + 4 * g + idx] = 1;
      }
    }
  const auto x = bf16_normal(rng, kM * kK, 1.0);
  const auto a = bf16_normal(rng, kR * kK, 1.0 / std::sqrt(static_cast<double>(kK)));
  const auto b = bf16_normal(rng, kN * kR, 1.0 / std::sqrt(static_cast<double>(kR)));
  const auto h = bf16_normal(rng, kPairs, 1.0);
  const auto dy = bf16_normal(rng, kM * kN, 1.0);

  Buffers mem;
  const int dev = 0;
  const int16_t* d_meta = mem.upload(meta);
  const uint16_t* d_values = mem.upload(values);
  const uint16_t* d_x = mem.upload(x);
  const uint16_t* d_a = mem.upload(a);
  const uint16_t* d_b = mem.upload(b);
  const uint16_t* d_h = mem.upload(h);
  const uint16_t* d_dy = mem.upload(dy);
  int16_t* d_meta_mma = mem.make<int16_t>(static_cast<size_t>(perfkern_sparse24_mma_meta_size(kN, kK / 16)));
  uint16_t* d_y = mem.make<uint16_t>(kM * kN);
  float* d_z = mem.make<float>(kM * kRh);
  uint16_t* d_bwd_values = mem.make<uint16_t>(kK * kN / 2);
  int16_t* d_bwd_meta = mem.make<int16_t>(kK * kN / 16);
  int16_t* d_bwd_meta_mma = mem.make<int16_t>(static_cast<size_t>(perfkern_sparse24_mma_meta_size(kK, kN / 16)));
  uint16_t* d_dx = mem.make<uint16_t>(kM * kK);
  uint16_t* d_da = mem.make<uint16_t>(kR * kK);
  uint16_t* d_db = mem.make<uint16_t>(kN * kR);
  uint16_t* d_dh = mem.make<uint16_t>(kPairs);
  float* d_dvalues = mem.make<float>(kN * kK / 2);
  if (!d_meta || !d_values || !d_x || !d_a || !d_b || !d_h || !d_dy || !d_meta_mma || !d_y || !d_z ||
      !d_bwd_values || !d_bwd_meta || !d_bwd_meta_mma || !d_dx || !d_da || !d_db || !d_dh || !d_dvalues) {
    std::fprintf(stderr, "allocation failed\n");
    return 1;
  }
  cudaStream_t stream = nullptr;

  // ---- forward: y = x . Ws^T on the sparse tensor cores, then y += the PERA term (Z kept).
  perfkern_sparse24_meta_to_mma_params_t mp{};
  mp.src = d_meta, mp.dst = d_meta_mma, mp.rows = kN, mp.meta_cols = kK / 16, mp.device = dev;
  if (!ok(perfkern_sparse24_meta_to_mma(&mp, stream), "perfkern_sparse24_meta_to_mma")) return 1;
  perfkern_sparse24_mm_params_t fwd{};
  fwd.x = d_x, fwd.values = d_values, fwd.meta_mma = d_meta_mma, fwd.out = d_y;
  fwd.m = kM, fwd.n = kN, fwd.k = kK, fwd.scale = 1.0f;
  fwd.x_row_stride = kK, fwd.values_row_stride = kK / 2, fwd.out_row_stride = kN;
  fwd.dtype = PERFKERN_DTYPE_BF16, fwd.device = dev;
  if (!ok(perfkern_sparse24_mm(&fwd, stream), "perfkern_sparse24_mm (forward)")) return 1;
  perfkern_pera_forward_params_t pf{};
  pf.x = d_x, pf.lora_a = d_a, pf.lora_b = d_b, pf.h = d_h, pf.out = d_y, pf.z = d_z;
  pf.m = kM, pf.n = kN, pf.k = kK, pf.r = kR, pf.scale = kScale, pf.accumulate = 1;
  pf.x_row_stride = kK, pf.a_row_stride = kK, pf.b_row_stride = kR, pf.out_row_stride = kN, pf.z_row_stride = kRh;
  pf.mode = PERFKERN_PERA_FULL, pf.dtype = PERFKERN_DTYPE_BF16, pf.device = dev;
  if (!ok(perfkern_pera_forward(&pf, stream), "perfkern_pera_forward")) return 1;

  // ---- backward: the double-pruned copy of Ws, dx through it, the adapter's gradients (adding its dx), dWs.
  perfkern_sparse24_transpose_prune_params_t tp{};
  tp.values = d_values, tp.meta = d_meta, tp.bwd_values = d_bwd_values, tp.bwd_meta = d_bwd_meta;
  tp.n = kN, tp.k = kK, tp.values_row_stride = kK / 2, tp.meta_row_stride = kK / 16;
  tp.bwd_values_row_stride = kN / 2, tp.bwd_meta_row_stride = kN / 16, tp.choose_mask = 1;
  tp.dtype = PERFKERN_DTYPE_BF16, tp.device = dev;
  if (!ok(perfkern_sparse24_transpose_prune(&tp, stream), "perfkern_sparse24_transpose_prune")) return 1;
  mp.src = d_bwd_meta, mp.dst = d_bwd_meta_mma, mp.rows = kK, mp.meta_cols = kN / 16;
  if (!ok(perfkern_sparse24_meta_to_mma(&mp, stream), "perfkern_sparse24_meta_to_mma (backward copy)")) return 1;
  perfkern_sparse24_mm_params_t bwd{};
  bwd.x = d_dy, bwd.values = d_bwd_values, bwd.meta_mma = d_bwd_meta_mma, bwd.out = d_dx;
  bwd.m = kM, bwd.n = kK, bwd.k = kN, bwd.scale = 1.0f;
  bwd.x_row_stride = kN, bwd.values_row_stride = kN / 2, bwd.out_row_stride = kK;
  bwd.dtype = PERFKERN_DTYPE_BF16, bwd.device = dev;
  if (!ok(perfkern_sparse24_mm(&bwd, stream), "perfkern_sparse24_mm (dx)")) return 1;
  perfkern_pera_backward_params_t pb{};
  pb.grad = d_dy, pb.x = d_x, pb.lora_a = d_a, pb.lora_b = d_b, pb.h = d_h, pb.z = d_z;
  pb.dx = d_dx, pb.d_a = d_da, pb.d_b = d_db, pb.d_h = d_dh, pb.accumulate = 1;
  pb.m = kM, pb.n = kN, pb.k = kK, pb.r = kR, pb.scale = kScale;
  pb.grad_row_stride = kN, pb.x_row_stride = kK, pb.a_row_stride = kK, pb.b_row_stride = kR, pb.z_row_stride = kRh;
  pb.dx_row_stride = kK, pb.d_a_row_stride = kK, pb.d_b_row_stride = kR;
  pb.mode = PERFKERN_PERA_FULL, pb.dtype = PERFKERN_DTYPE_BF16, pb.device = dev;
  int64_t workspace_bytes = 0;
  if (!ok(perfkern_pera_backward_workspace_size(&pb, &workspace_bytes), "perfkern_pera_backward_workspace_size")) {
    return 1;
  }
  pb.workspace = mem.make<unsigned char>(static_cast<size_t>(workspace_bytes));
  pb.workspace_bytes = workspace_bytes;
  if (!ok(perfkern_pera_backward(&pb, stream), "perfkern_pera_backward")) return 1;
  perfkern_sparse24_weight_grad_params_t wg{};
  wg.dy = d_dy, wg.x = d_x, wg.meta = d_meta, wg.out = d_dvalues;
  wg.m = kM, wg.n = kN, wg.k = kK, wg.dy_row_stride = kN, wg.x_row_stride = kK, wg.meta_row_stride = kK / 16;
  wg.out_row_stride = kK / 2, wg.accumulate = 0, wg.dtype = PERFKERN_DTYPE_BF16, wg.out_dtype = PERFKERN_DTYPE_F32;
  wg.device = dev;
  if (!ok(perfkern_sparse24_weight_grad(&wg, stream), "perfkern_sparse24_weight_grad")) return 1;

  // ---- dendrites: candidates of the layer's neurons against their error dy, two batches folded into the state.
  std::vector<float> v(kM * kC * kN), e(kM * kN);
  for (int64_t t = 0; t < kM; ++t)
    for (int64_t n = 0; n < kN; ++n) {
      e[t * kN + n] = static_cast<float>(from_bf16(dy[t * kN + n]));
      for (int64_t c = 0; c < kC; ++c) {
        // sigma of a candidate's input: near 0.5 with a small spread, the case that needs a stable reduction.
        const double pre = 0.05 * (from_bf16(x[t * kK + (n + 7 * c) % kK]) + 0.3 * c * e[t * kN + n]);
        v[(t * kC + c) * kN + n] = static_cast<float>(1.0 / (1.0 + std::exp(-pre)));
      }
    }
  const float* d_v = mem.upload(v);
  const float* d_e = mem.upload(e);
  auto moments = [&](perfkern_dendrite_moments_t& s) {
    s.v_mean = mem.make<float>(kC * kN), s.cov = mem.make<float>(kC * kN), s.v_var = mem.make<float>(kC * kN);
    s.e_mean = mem.make<float>(kN), s.e_var = mem.make<float>(kN), s.count = 0.0;
    std::vector<float> zeros(kC * kN, 0.0f);
    return to_device(s.v_mean, zeros.data(), kC * kN * 4) && to_device(s.cov, zeros.data(), kC * kN * 4) &&
           to_device(s.v_var, zeros.data(), kC * kN * 4) && to_device(s.e_mean, zeros.data(), kN * 4) &&
           to_device(s.e_var, zeros.data(), kN * 4);
  };
  perfkern_dendrite_moments_t batch{}, running{}, epoch{};
  if (!moments(batch) || !moments(running) || !moments(epoch)) return 1;
  float* d_score = mem.make<float>(kC * kN);
  float* d_dv = mem.make<float>(kM * kC * kN);
  // The batch splits into two halves of the tokens: two batches folded, the second one's gradient checked.
  const int64_t half = kM / 2;
  for (int64_t part = 0; part < 2; ++part) {
    perfkern_dendrite_correlation_params_t cp{};
    cp.values = d_v + part * half * kC * kN, cp.errors = d_e + part * half * kN, cp.stats = batch;
    cp.layers = 1, cp.p = half, cp.c = kC, cp.n = kN;
    cp.values_stride_l = kM * kC * kN, cp.values_stride_p = kC * kN, cp.values_stride_c = kN;
    cp.errors_stride_l = kM * kN, cp.errors_stride_p = kN;
    cp.mode = PERFKERN_DENDRITE_PEARSON, cp.dtype = PERFKERN_DTYPE_F32, cp.device = dev;
    if (!ok(perfkern_dendrite_correlation(&cp, stream), "perfkern_dendrite_correlation")) return 1;
    batch.count = static_cast<double>(half);
    perfkern_dendrite_state_update_params_t su{};
    su.batch = batch, su.running = running, su.epoch = epoch, su.running_score = d_score;
    su.batch_number = part + 1, su.window = 20, su.beta = 0.99, su.layers = 1, su.c = kC, su.n = kN;
    su.mode = PERFKERN_DENDRITE_PEARSON, su.device = dev;
    if (!ok(perfkern_dendrite_state_update(&su, stream), "perfkern_dendrite_state_update")) return 1;
    running.count += batch.count, epoch.count += batch.count;
  }
  perfkern_dendrite_grad_params_t dg{};
  dg.values = d_v + half * kC * kN, dg.errors = d_e + half * kN, dg.batch = batch, dg.upstream = d_score;
  dg.out = d_dv, dg.layers = 1, dg.p = half, dg.c = kC, dg.n = kN;
  dg.values_stride_l = kM * kC * kN, dg.values_stride_p = kC * kN, dg.values_stride_c = kN;
  dg.errors_stride_l = kM * kN, dg.errors_stride_p = kN;
  dg.out_stride_l = half * kC * kN, dg.out_stride_p = kC * kN, dg.out_stride_c = kN;
  dg.source = PERFKERN_DENDRITE_GRAD_CASCADE, dg.mode = PERFKERN_DENDRITE_PEARSON, dg.dtype = PERFKERN_DTYPE_F32;
  dg.device = dev;
  if (!ok(perfkern_dendrite_grad(&dg, stream), "perfkern_dendrite_grad")) return 1;

  // ---- the reference, and the comparison.
  const Reference ref = reference(widen(x), w, kept, widen(a), widen(b), widen(h), widen(dy));
  const Stats second = dendrite_stats(std::vector<float>(v.begin() + half * kC * kN, v.end()),
                                      std::vector<float>(e.begin() + half * kN, e.end()), half);
  const Stats all = dendrite_stats(v, e, kM);  // two cumulative batches of equal size: the whole batch
  std::vector<double> running_score(kC * kN), candidate_grad(half * kC * kN);
  for (int64_t c = 0; c < kC; ++c)
    for (int64_t n = 0; n < kN; ++n) {
      const int64_t at = c * kN + n;
      running_score[at] = pearson(all.cov[at], all.v_var[at], all.e_var[n]);
      // d(-|score|)/dV of the second batch's Pearson score, signed by the running score (Cascade-Correlation).
      const double g = running_score[at] > 0 ? -1.0 : (running_score[at] < 0 ? 1.0 : 0.0);
      const double sd = std::sqrt(second.v_var[at] * second.e_var[n]);
      const double s = pearson(second.cov[at], second.v_var[at], second.e_var[n]);
      const double alpha = sd > 0 ? g / (half * sd) : 0.0, beta = sd > 0 ? -g * s / (half * second.v_var[at]) : 0.0;
      for (int64_t t = 0; t < half; ++t) {
        const double vt = v[((half + t) * kC + c) * kN + n], et = e[(half + t) * kN + n];
        candidate_grad[(t * kC + c) * kN + n] = alpha * (et - second.e_mean[n]) + beta * (vt - second.v_mean[at]);
      }
    }
  bool good = true;
  std::printf("checked against the reference (double, from the same bf16 / fp32 inputs):\n");
  good &= close("y = x Ws^T + PERA", download(d_y, kM * kN), ref.y, 2e-2, bf16_value);
  good &= close("dx (double-pruned + PERA)", download(d_dx, kM * kK), ref.dx, 2e-2, bf16_value);
  good &= close("dWs (compressed, fp32)", download(d_dvalues, kN * kK / 2), ref.dvalues, 1e-4, f32_value);
  good &= close("dA", download(d_da, kR * kK), ref.da, 2e-2, bf16_value);
  good &= close("dB", download(d_db, kN * kR), ref.db, 2e-2, bf16_value);
  good &= close("dh", download(d_dh, kPairs), ref.dh, 2e-2, bf16_value);
  good &= close("running v_var", download(running.v_var, kC * kN), all.v_var, 1e-4, f32_value);
  good &= close("running cov", download(running.cov, kC * kN), all.cov, 1e-4, f32_value);
  good &= close("running score (Pearson)", download(d_score, kC * kN), running_score, 1e-4, f32_value);
  good &= close("candidate gradient", download(d_dv, half * kC * kN), candidate_grad, 1e-4, f32_value);
  if (!good) {
    std::printf("training step FAILED\n");
    return 1;
  }
  std::printf("training step OK: SparseLoRALinear (2:4, PERA r=%lld full) fwd + bwd and a dendrite update, "
              "M=%lld N=%lld K=%lld bf16\n",
              static_cast<long long>(kR), static_cast<long long>(kM), static_cast<long long>(kN),
              static_cast<long long>(kK));
  return 0;
}

}  // namespace

int main() {
  std::printf("perfkern %s (%s build, CUDA archs '%s')\n", perfkern_version(), perfkern_build_flavor(),
              perfkern_cuda_archs());
  int count = 0;
  const perfkern_status_t status = perfkern_device_count(&count);
  if (status != PERFKERN_SUCCESS || count == 0) {
    std::printf("training step skipped: no device (%s: %s)\n", perfkern_status_string(status), perfkern_last_error());
    return 0;
  }
#ifdef PERFKERN_EXAMPLE_CUDA
  if (cudaSetDevice(0) != cudaSuccess) {
    std::fprintf(stderr, "cudaSetDevice(0) failed\n");
    return 1;
  }
#endif
  return train_step();
}
