// The CPU launchers of the C API: parameter checks, the choice of ISA (cpuid at run time) and kernel shape, the
// one-time preparation of x (fp32, in the layout the kernel reads) and the split of the output's columns over the
// pool's threads. The kernels themselves are in kernels_<isa>.cpp, each compiled for its instruction set.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "common/internal.h"
#include "cpu/cpu.h"
#include "perfkern/perfkern.h"

#if defined(PERFKERN_CPU_X86) && !defined(PERFKERN_CPU_SIMDE)
#include <cpuid.h>
#endif

namespace perfkern {
namespace cpu {
namespace {

using detail::fail;

perfkern_status_t invalid(const std::string& msg) { return fail(PERFKERN_ERROR_INVALID_VALUE, msg); }

// ---- which instruction sets this CPU runs ---------------------------------------------------------------

struct Features {
  bool avx2 = false;         // AVX2 + FMA + F16C, with the OS saving ymm state
  bool avx512 = false;       // AVX-512 F/BW/VL, with the OS saving zmm state
  bool avx512_bf16 = false;  // and AVX512_BF16
};

#if defined(PERFKERN_CPU_SIMDE)
// The test build of tests/csrc/cpu_isa_emulated.cpp: every intrinsic is SIMDe's portable one, so every ISA runs.
Features detect() { return Features{true, true, true}; }
#elif defined(PERFKERN_CPU_X86)
Features detect() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!(osxsave && avx)) return f;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool ymm_state = (xcr0_lo & 0x6u) == 0x6u;
  const bool zmm_state = (xcr0_lo & 0xe6u) == 0xe6u;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  const unsigned max_sub = a;
  f.avx2 = ymm_state && avx2 && fma && f16c;
  f.avx512 = f.avx2 && zmm_state && avx512f && avx512bw && avx512vl;
  if (f.avx512 && max_sub >= 1) {
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = a & (1u << 5);
  }
  return f;
}
#else
Features detect() { return Features{}; }
#endif

const Features& features() {
  static const Features f = detect();
  return f;
}

bool supported(perfkern_cpu_isa_t isa) {
  switch (isa) {
    case PERFKERN_CPU_ISA_AUTO:
    case PERFKERN_CPU_ISA_SCALAR:
      return true;
    case PERFKERN_CPU_ISA_AVX2:
      return features().avx2;
    case PERFKERN_CPU_ISA_AVX512:
      return features().avx512;
    case PERFKERN_CPU_ISA_AVX512_BF16:
      return features().avx512_bf16;
  }
  return false;
}

perfkern_cpu_isa_t best_isa() {
  if (features().avx512_bf16) return PERFKERN_CPU_ISA_AVX512_BF16;
  if (features().avx512) return PERFKERN_CPU_ISA_AVX512;
  if (features().avx2) return PERFKERN_CPU_ISA_AVX2;
  return PERFKERN_CPU_ISA_SCALAR;
}

const Kernels& kernels_of(perfkern_cpu_isa_t isa) {
  switch (isa) {
#if defined(PERFKERN_CPU_X86)
    case PERFKERN_CPU_ISA_AVX2:
      return avx2_kernels();
    case PERFKERN_CPU_ISA_AVX512:
      return avx512_kernels();
    case PERFKERN_CPU_ISA_AVX512_BF16:
      return avx512_bf16_kernels();
#endif
    default:
      return scalar_kernels();
  }
}

// ---- parameter checks -------------------------------------------------------------------------------------

perfkern_status_t check_ptr(const void* ptr, const char* name, bool needed) {
  if (needed && ptr == nullptr) return invalid(std::string(name) + ": expected a non-null pointer, got NULL");
  return PERFKERN_SUCCESS;
}

perfkern_status_t check_stride(int64_t stride, int64_t needed, const char* needed_expr, int64_t rows,
                               const char* name) {
  return detail::check_row_stride(stride, needed, needed_expr, rows, name);
}

// What the two launchers share, checked.
struct Common {
  const void* x;
  const void* bias;
  const void* lora_t;
  const void* lora_b;
  void* out;
  int64_t m, n, k, r;
  float scale;
  int64_t x_row_stride, bias_stride, t_stride0, t_stride1, b_stride0, b_stride1, out_row_stride;
  perfkern_dtype_t dtype;
  int num_threads;
  perfkern_cpu_isa_t isa;
};

perfkern_status_t check_common(const Common& c) {
  PERFKERN_RETURN_IF_ERROR(detail::check_non_negative(c.m, "m"));
  PERFKERN_RETURN_IF_ERROR(detail::check_non_negative(c.n, "n"));
  PERFKERN_RETURN_IF_ERROR(detail::check_non_negative(c.k, "k"));
  PERFKERN_RETURN_IF_ERROR(detail::check_non_negative(c.r, "r"));
  PERFKERN_RETURN_IF_ERROR(detail::check_multiple_of(c.k, 16, "k"));
  PERFKERN_RETURN_IF_ERROR(detail::check_dtype(c.dtype));
  if (c.num_threads < 1 || c.num_threads > 4096) {
    return invalid("num_threads: expected 1..4096, got " + std::to_string(c.num_threads));
  }
  const int isa = static_cast<int>(c.isa);
  if (isa < PERFKERN_CPU_ISA_AUTO || isa > PERFKERN_CPU_ISA_AVX512_BF16) {
    return invalid("isa: expected 0 (auto) .. 4 (avx512_bf16), got " + std::to_string(isa));
  }
  if (!supported(c.isa)) {
    return fail(PERFKERN_ERROR_NOT_SUPPORTED, std::string("isa: this CPU or build cannot run ") +
                                                  perfkern_cpu_isa_name(c.isa) + " (best here: " +
                                                  perfkern_cpu_isa_name(best_isa()) + ")");
  }
  const bool any_out = c.m > 0 && c.n > 0;
  PERFKERN_RETURN_IF_ERROR(check_ptr(c.out, "out", any_out));
  PERFKERN_RETURN_IF_ERROR(check_ptr(c.x, "x", any_out && c.k > 0));
  // Inputs are only read, so any stride >= 0 will do (0: a broadcast row or bias); output rows must not overlap.
  for (const auto& [stride, name] : {std::pair<int64_t, const char*>{c.x_row_stride, "x_row_stride"},
                                     {c.bias_stride, "bias_stride"}, {c.t_stride0, "t_stride0"},
                                     {c.t_stride1, "t_stride1"}, {c.b_stride0, "b_stride0"},
                                     {c.b_stride1, "b_stride1"}}) {
    PERFKERN_RETURN_IF_ERROR(detail::check_non_negative(stride, name));
  }
  PERFKERN_RETURN_IF_ERROR(check_stride(c.out_row_stride, c.n, "n", c.m, "out_row_stride"));
  if (c.r > 0 && any_out) {
    PERFKERN_RETURN_IF_ERROR(check_ptr(c.lora_t, "lora_t", true));
    PERFKERN_RETURN_IF_ERROR(check_ptr(c.lora_b, "lora_b", true));
  }
  return PERFKERN_SUCCESS;
}

// ---- preparing x ------------------------------------------------------------------------------------------

// x row m into dst (fp32), in `layout` (see cpu.h); kColsT is written by prepare_cols.
void prepare_row(const Common& c, int64_t m, XLayout layout, float* dst) {
  const void* src = c.x;
  const int64_t base = m * c.x_row_stride;
  if (layout == XLayout::kRowsPlain) {
    load_row_f32(src, base, 1, c.k, c.dtype, dst);
    return;
  }
  int64_t col = 0;
  for (; col + 32 <= c.k; col += 32) {
    for (int q = 0; q < 4; ++q) {
      for (int h = 0; h < 2; ++h) {
        for (int i = 0; i < 4; ++i) {
          dst[col + 8 * q + 4 * h + i] = load_f32(src, base + col + 16 * h + 4 * q + i, c.dtype);
        }
      }
    }
  }
  load_row_f32(src, base + col, 1, c.k - col, c.dtype, dst + col);
}

// x^T [k][mp], m padded with zeros, 64 columns of x per pass so each row's span stays in cache: each row's span is
// converted to fp32 once (contiguous, so the conversion vectorises) and then written down its column of x^T.
void prepare_cols(const Common& c, float* dst, int64_t mp) {
  constexpr int64_t kBlock = 64;
  float span[kBlock];
  for (int64_t kb = 0; kb < c.k; kb += kBlock) {
    const int64_t len = std::min(kBlock, c.k - kb);
    for (int64_t m = 0; m < mp; ++m) {
      float* col = dst + kb * mp + m;
      if (m < c.m) {
        load_row_f32(c.x, m * c.x_row_stride + kb, 1, len, c.dtype, span);
        for (int64_t i = 0; i < len; ++i) col[i * mp] = span[i];
      } else {
        for (int64_t i = 0; i < len; ++i) col[i * mp] = 0.0f;
      }
    }
  }
}

// The fields the sparse and dense launchers' params share.
template <class Params>
Common common_of(const Params& q) {
  return Common{q.x,           q.bias,      q.lora_t,    q.lora_b,    q.out,       q.m,
                q.n,           q.k,         q.r,         q.scale,     q.x_row_stride, q.bias_stride,
                q.t_stride0,   q.t_stride1, q.b_stride0, q.b_stride1, q.out_row_stride, q.dtype,
                q.num_threads, q.isa};
}

// ---- the parallel product ---------------------------------------------------------------------------------

struct MmJob {
  Problem p;
  const Kernels* kernels;
  bool cols;
  float* thread_scratch;
  int64_t thread_scratch_floats;
  int64_t chunk;                     // output columns per grab, a multiple of 4 (the kernels' row tile)
  std::atomic<int64_t> next{0};      // the first column not yet taken
};

// Threads take runs of output columns (weight rows) from a shared counter until none are left, so a thread that
// the OS runs late (a loaded machine) takes less, instead of making every other thread wait for its share.
void mm_task(void* ctx, int t, int threads) {
  (void)threads;
  auto& job = *static_cast<MmJob*>(ctx);
  Scratch scratch{job.thread_scratch + t * job.thread_scratch_floats, job.thread_scratch_floats};
  const auto kernel = job.cols ? job.kernels->cols : job.kernels->rows;
  for (;;) {
    const int64_t n0 = job.next.fetch_add(job.chunk, std::memory_order_relaxed);
    if (n0 >= job.p.n) return;
    kernel(job.p, n0, std::min(job.p.n, n0 + job.chunk), scratch);
  }
}

// Threads worth starting: about 256K multiply-adds each at least (a wake-up costs microseconds), and 4 weight rows.
int threads_for(const Common& c, bool sparse) {
  const int64_t macs = c.m * c.n * (sparse ? c.k / 2 : c.k);
  const int64_t by_work = std::max<int64_t>(1, macs / (256 * 1024));
  const int64_t by_rows = std::max<int64_t>(1, c.n / 4);
  return static_cast<int>(std::min<int64_t>({c.num_threads, by_work, by_rows}));
}

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

perfkern_status_t run_mm(const Common& c, bool sparse, const void* weight, const int16_t* meta, int64_t weight_stride,
                         int64_t meta_stride) {
  if (c.m == 0 || c.n == 0) return PERFKERN_SUCCESS;
  const perfkern_cpu_isa_t isa = c.isa == PERFKERN_CPU_ISA_AUTO ? best_isa() : c.isa;
  const Kernels& kernels = kernels_of(isa);

  Problem p{};
  p.sparse = sparse;
  p.values = weight;
  p.meta = meta;
  p.values_stride = weight_stride;
  p.meta_stride = meta_stride;
  p.dtype = c.dtype;
  p.m = c.m;
  p.n = c.n;
  p.k = c.k;
  p.bias = c.bias;
  p.bias_stride = c.bias_stride;
  p.lora_b = c.lora_b;
  p.b_stride0 = c.b_stride0;
  p.b_stride1 = c.b_stride1;
  p.r = c.r;
  p.scale = c.scale;
  p.out = c.out;
  p.out_stride = c.out_row_stride;
  p.x_native = c.x;
  p.x_native_stride = c.x_row_stride;

  const bool cols = c.m >= kColsMinM;
  const int threads = threads_for(c, sparse);
  p.layout = cols ? XLayout::kColsT : kernels.rows_layout(p);
  // x^T's row length: a power of two, so the cols kernel finds the row a nibble names with a shift.
  int64_t mp = kernels.vector_width;
  while (cols && mp < c.m) mp *= 2;
  // x used in place where it already is what the kernel reads (fp32, plain rows).
  const bool x_in_place =
      p.layout == XLayout::kNative || (p.layout == XLayout::kRowsPlain && c.dtype == PERFKERN_DTYPE_F32);
  const int64_t x_floats = x_in_place ? 0 : (cols ? c.k * mp : c.m * c.k);
  const int64_t t_floats = c.r > 0 ? c.m * c.r : 0;
  // Per thread: 4 weight rows in fp32 (an fp16 weight converted) and the accumulators (the cols kernel's: a pass
  // of kColsSweepRows rows x mp).
  const int64_t per_thread = round_up(4 * (c.k + 16) + 256 + c.m + (cols ? kColsSweepRows * mp : 0), 16);

  PoolLock lock;
  const size_t bytes = sizeof(float) * static_cast<size_t>(round_up(x_floats, 16) + round_up(t_floats, 16) +
                                                           per_thread * threads);
  auto* scratch = static_cast<float*>(pool_scratch(bytes));
  if (scratch == nullptr) {
    return fail(PERFKERN_ERROR_NOT_SUPPORTED, "out of memory for " + std::to_string(bytes) + " bytes of scratch");
  }
  float* xbuf = scratch;
  float* tbuf = xbuf + round_up(x_floats, 16);
  float* thread_scratch = tbuf + round_up(t_floats, 16);

  if (x_in_place) {
    p.x = static_cast<const float*>(c.x);
    p.x_stride = c.x_row_stride;
  } else if (cols) {
    prepare_cols(c, xbuf, mp);
    p.x = xbuf;
    p.x_stride = mp;
  } else {
    for (int64_t m = 0; m < c.m; ++m) prepare_row(c, m, p.layout, xbuf + m * c.k);
    p.x = xbuf;
    p.x_stride = c.k;
  }
  for (int64_t m = 0; m < c.m && c.r > 0; ++m) {
    load_row_f32(c.lora_t, m * c.t_stride0, c.t_stride1, c.r, c.dtype, tbuf + m * c.r);
  }
  p.lora_t = tbuf;

  MmJob job;
  job.p = p;
  job.kernels = &kernels;
  job.cols = cols;
  job.thread_scratch = thread_scratch;
  job.thread_scratch_floats = per_thread;
  // About 16 runs per thread: small enough to even out a late thread, large enough to keep the weight streaming.
  job.chunk = std::max<int64_t>(4, round_up(c.n / (16 * threads), 4));
  pool_run(mm_task, &job, threads);
  return PERFKERN_SUCCESS;
}

}  // namespace
}  // namespace cpu
}  // namespace perfkern

extern "C" {

perfkern_cpu_isa_t perfkern_cpu_isa(void) { return perfkern::cpu::best_isa(); }

const char* perfkern_cpu_isa_name(perfkern_cpu_isa_t isa) {
  switch (isa) {
    case PERFKERN_CPU_ISA_AUTO:
      return "auto";
    case PERFKERN_CPU_ISA_SCALAR:
      return "scalar";
    case PERFKERN_CPU_ISA_AVX2:
      return "avx2";
    case PERFKERN_CPU_ISA_AVX512:
      return "avx512";
    case PERFKERN_CPU_ISA_AVX512_BF16:
      return "avx512_bf16";
  }
  return "unknown";
}

int perfkern_cpu_isa_supported(perfkern_cpu_isa_t isa) { return perfkern::cpu::supported(isa) ? 1 : 0; }

perfkern_status_t perfkern_sparse24_mm_cpu(const perfkern_sparse24_mm_cpu_params_t* params) {
  using namespace perfkern::cpu;
  PERFKERN_RETURN_IF_ERROR(perfkern::detail::check_params_ptr(params));
  const auto& q = *params;
  const Common c = common_of(q);
  PERFKERN_RETURN_IF_ERROR(check_common(c));
  const bool any = q.m > 0 && q.n > 0 && q.k > 0;
  PERFKERN_RETURN_IF_ERROR(check_ptr(q.values, "values", any));
  PERFKERN_RETURN_IF_ERROR(check_ptr(q.meta, "meta", any));
  PERFKERN_RETURN_IF_ERROR(perfkern::detail::check_non_negative(q.values_row_stride, "values_row_stride"));
  PERFKERN_RETURN_IF_ERROR(perfkern::detail::check_non_negative(q.meta_row_stride, "meta_row_stride"));
  return run_mm(c, true, q.values, q.meta, q.values_row_stride, q.meta_row_stride);
}

perfkern_status_t perfkern_dense_mm_cpu(const perfkern_dense_mm_cpu_params_t* params) {
  using namespace perfkern::cpu;
  PERFKERN_RETURN_IF_ERROR(perfkern::detail::check_params_ptr(params));
  const auto& q = *params;
  const Common c = common_of(q);
  PERFKERN_RETURN_IF_ERROR(check_common(c));
  PERFKERN_RETURN_IF_ERROR(check_ptr(q.w, "w", q.m > 0 && q.n > 0 && q.k > 0));
  PERFKERN_RETURN_IF_ERROR(perfkern::detail::check_non_negative(q.w_row_stride, "w_row_stride"));
  return run_mm(c, false, q.w, nullptr, q.w_row_stride, 0);
}

}  // extern "C"
