// The emulated build's stand-in for the CUDA toolkit's header of that name (csrc/emu). On the include path of
// the emulated build only.
#ifndef PERFKERN_EMU_CUDA_FP16_H_
#define PERFKERN_EMU_CUDA_FP16_H_

#include "perfkern_emu/fp16.h"

#endif  // PERFKERN_EMU_CUDA_FP16_H_
