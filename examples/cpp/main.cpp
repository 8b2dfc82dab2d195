// Minimal consumer of perfkern's C API: prints the build, runs the CPU 2:4 product (every build has it) on a small
// problem and checks it against a plain loop, lists the device and, when there is one, checks a compress ->
// decompress round trip of a 64x64 fp32 matrix that already is 2:4 sparse. Against a CUDA build
// (PERFKERN_EXAMPLE_CUDA) the buffers are device memory; against the emulated build (PERFKERN_EXAMPLE_EMULATED)
// the kernels run on the CPU, on host memory, before each launcher returns; a build without CUDA reports the
// build and that it has no device.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <perfkern/perfkern.h>
#ifdef PERFKERN_EXAMPLE_CUDA
#include <cuda_runtime.h>
#endif

namespace {

bool perfkern_ok(perfkern_status_t status, const char* what) {
  if (status != PERFKERN_SUCCESS) {
    std::fprintf(stderr, "%s failed: %s: %s\n", what, perfkern_status_string(status), perfkern_last_error());
    return false;
  }
  return true;
}

#if defined(PERFKERN_EXAMPLE_CUDA)

bool cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s failed: %s\n", what, cudaGetErrorString(err));
    return false;
  }
  return true;
}

// The launchers' memory: the GPU's.
bool use_device(int device) { return cuda_ok(cudaSetDevice(device), "cudaSetDevice"); }
bool device_alloc(void** p, size_t bytes) { return cuda_ok(cudaMalloc(p, bytes), "cudaMalloc"); }
void device_free(void* p) { cudaFree(p); }
bool to_device(void* dst, const void* src, size_t bytes) {
  return cuda_ok(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
}
bool device_fill(void* p, int byte, size_t bytes) { return cuda_ok(cudaMemset(p, byte, bytes), "cudaMemset"); }
bool to_host(void* dst, const void* src, size_t bytes) {
  return cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize") &&
         cuda_ok(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
}

#elif defined(PERFKERN_EXAMPLE_EMULATED)

// The launchers' memory: the emulated device computes on host memory.
bool use_device(int) { return true; }
bool device_alloc(void** p, size_t bytes) { return (*p = std::malloc(bytes)) != nullptr; }
void device_free(void* p) { std::free(p); }
bool to_device(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return true;
}
bool device_fill(void* p, int byte, size_t bytes) {
  std::memset(p, byte, bytes);
  return true;
}
bool to_host(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return true;
}

#endif

#if defined(PERFKERN_EXAMPLE_CUDA) || defined(PERFKERN_EXAMPLE_EMULATED)

int round_trip(int device) {
  constexpr int64_t kRows = 64;
  constexpr int64_t kCols = 64;
  // Each group of 4 keeps two distinct non-zero entries; the pair varies across groups.
  static const int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
  std::vector<float> host(kRows * kCols, 0.0f);
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t g = 0; g < kCols / 4; ++g) {
      const int* pair = kPairs[(r + g) % 6];
      host[r * kCols + 4 * g + pair[0]] = static_cast<float>(r + 1) + 0.25f * static_cast<float>(g);
      host[r * kCols + 4 * g + pair[1]] = -static_cast<float>(g + 1) - 0.5f * static_cast<float>(r);
    }
  }

  if (!use_device(device)) return 1;
  float* d_src = nullptr;
  float* d_values = nullptr;
  int16_t* d_meta = nullptr;
  float* d_dense = nullptr;
  const size_t dense_bytes = sizeof(float) * kRows * kCols;
  bool ok = device_alloc(reinterpret_cast<void**>(&d_src), dense_bytes) &&
            device_alloc(reinterpret_cast<void**>(&d_values), dense_bytes / 2) &&
            device_alloc(reinterpret_cast<void**>(&d_meta), sizeof(int16_t) * kRows * (kCols / 16)) &&
            device_alloc(reinterpret_cast<void**>(&d_dense), dense_bytes) &&
            to_device(d_src, host.data(), dense_bytes) && device_fill(d_dense, 0xff, dense_bytes);

  if (ok) {
    perfkern_sparse24_compress_params_t cp{};
    cp.src = d_src;
    cp.values = d_values;
    cp.meta = d_meta;
    cp.mask = nullptr;
    cp.rows = kRows;
    cp.cols = kCols;
    cp.src_row_stride = kCols;
    cp.values_row_stride = kCols / 2;
    cp.meta_row_stride = kCols / 16;
    cp.mask_row_stride = kCols;
    cp.dtype = PERFKERN_DTYPE_F32;
    cp.device = device;
    ok = perfkern_ok(perfkern_sparse24_compress(&cp, nullptr), "perfkern_sparse24_compress");
  }
  if (ok) {
    perfkern_sparse24_decompress_params_t dp{};
    dp.values = d_values;
    dp.meta = d_meta;
    dp.dense = d_dense;
    dp.rows = kRows;
    dp.cols = kCols;
    dp.values_row_stride = kCols / 2;
    dp.meta_row_stride = kCols / 16;
    dp.dense_row_stride = kCols;
    dp.dtype = PERFKERN_DTYPE_F32;
    dp.device = device;
    ok = perfkern_ok(perfkern_sparse24_decompress(&dp, nullptr), "perfkern_sparse24_decompress");
  }
  std::vector<float> back(kRows * kCols, 0.0f);
  if (ok) {
    ok = to_host(back.data(), d_dense, dense_bytes);
  }
  device_free(d_src);
  device_free(d_values);
  device_free(d_meta);
  device_free(d_dense);
  if (!ok) return 1;

  int64_t mismatches = 0;
  for (int64_t i = 0; i < kRows * kCols; ++i) {
    if (std::memcmp(&back[i], &host[i], sizeof(float)) != 0) {
      if (mismatches < 5) {
        std::fprintf(stderr, "mismatch at (%lld, %lld): got %g, expected %g\n", static_cast<long long>(i / kCols),
                     static_cast<long long>(i % kCols), back[i], host[i]);
      }
      ++mismatches;
    }
  }
  if (mismatches != 0) {
    std::fprintf(stderr, "round trip FAILED: %lld of %lld entries differ\n", static_cast<long long>(mismatches),
                 static_cast<long long>(kRows * kCols));
    return 1;
  }
  std::printf("round trip OK: compress -> decompress of a %lldx%lld fp32 2:4 matrix\n",
              static_cast<long long>(kRows), static_cast<long long>(kCols));
  return 0;
}
#endif  // PERFKERN_EXAMPLE_CUDA || PERFKERN_EXAMPLE_EMULATED

// out = x . Ws^T + bias on the CPU kernels for a 2:4 weight built here in the canonical format (each group of 4
// keeps columns (g % 3, 3): every metadata nibble is 0b11xx), against the same sum written out.
int cpu_product() {
  constexpr int64_t kM = 3, kN = 37, kK = 80;
  std::vector<float> x(kM * kK), values(kN * kK / 2), bias(kN), out(kM * kN, NAN);
  std::vector<int16_t> meta(kN * kK / 16);
  for (int64_t i = 0; i < kM * kK; ++i) x[i] = static_cast<float>((i * 7) % 13) - 6.0f;
  for (int64_t i = 0; i < kN * kK / 2; ++i) values[i] = static_cast<float>((i * 5) % 11) * 0.25f - 1.0f;
  for (int64_t n = 0; n < kN; ++n) bias[n] = 0.5f * static_cast<float>(n);
  for (int64_t n = 0; n < kN; ++n) {
    for (int64_t g = 0; g < kK / 4; ++g) {
      const int first = static_cast<int>(g % 3);
      const uint16_t nibble = static_cast<uint16_t>(first | (3 << 2));
      meta[n * (kK / 16) + g / 4] = static_cast<int16_t>(meta[n * (kK / 16) + g / 4] | (nibble << (4 * (g % 4))));
    }
  }
  perfkern_sparse24_mm_cpu_params_t p{};
  p.x = x.data();
  p.values = values.data();
  p.meta = meta.data();
  p.bias = bias.data();
  p.out = out.data();
  p.m = kM;
  p.n = kN;
  p.k = kK;
  p.x_row_stride = kK;
  p.values_row_stride = kK / 2;
  p.meta_row_stride = kK / 16;
  p.bias_stride = 1;
  p.out_row_stride = kN;
  p.dtype = PERFKERN_DTYPE_F32;
  p.num_threads = 2;
  p.isa = PERFKERN_CPU_ISA_AUTO;
  if (!perfkern_ok(perfkern_sparse24_mm_cpu(&p), "perfkern_sparse24_mm_cpu")) return 1;
  double worst = 0.0;
  for (int64_t m = 0; m < kM; ++m) {
    for (int64_t n = 0; n < kN; ++n) {
      double expected = bias[n];
      for (int64_t g = 0; g < kK / 4; ++g) {
        expected += static_cast<double>(values[n * kK / 2 + 2 * g]) * x[m * kK + 4 * g + g % 3] +
                    static_cast<double>(values[n * kK / 2 + 2 * g + 1]) * x[m * kK + 4 * g + 3];
      }
      const double err = std::fabs(out[m * kN + n] - expected);
      worst = std::isnan(err) ? INFINITY : (err > worst ? err : worst);
    }
  }
  if (!(worst <= 1e-3)) {
    std::fprintf(stderr, "CPU 2:4 product FAILED: largest error %g\n", worst);
    return 1;
  }
  std::printf("CPU 2:4 product OK (%s kernels): %lldx%lldx%lld fp32 against a plain loop\n",
              perfkern_cpu_isa_name(perfkern_cpu_isa()), static_cast<long long>(kM), static_cast<long long>(kN),
              static_cast<long long>(kK));
  return 0;
}

}  // namespace

int main() {
  std::printf("perfkern %s (%s build, CUDA archs '%s')\n", perfkern_version(), perfkern_build_flavor(),
              perfkern_cuda_archs());
  if (cpu_product() != 0) return 1;
  int count = 0;
  const perfkern_status_t status = perfkern_device_count(&count);
  if (status != PERFKERN_SUCCESS || count == 0) {
    std::printf("no CUDA device (%s: %s); skipping the round trip\n", perfkern_status_string(status),
                perfkern_last_error());
    return 0;
  }
  perfkern_device_info_t info;
  if (!perfkern_ok(perfkern_device_info(0, &info), "perfkern_device_info")) return 1;
  std::printf("device 0: %s, compute capability %d.%d, %d SMs, %lld bytes\n", info.name, info.major, info.minor,
              info.multiprocessor_count, static_cast<long long>(info.total_global_mem));
#if defined(PERFKERN_EXAMPLE_CUDA) || defined(PERFKERN_EXAMPLE_EMULATED)
  return round_trip(0);
#else
  return 0;
#endif
}
