// AVX-512 (F, BW, VL) kernels, fp32 arithmetic for every dtype. Compiled with -mavx512f -mavx512bw -mavx512vl
// -mfma -mf16c; run only where cpuid says so.
#include "cpu/kernels_avx512.h"

namespace perfkern {
namespace cpu {

const Kernels& avx512_kernels() {
  static const Kernels k{avx512::rows_layout, avx512::V16::kWidth, avx512::rows, cols_impl::cols<avx512::V16>};
  return k;
}

}  // namespace cpu
}  // namespace perfkern
