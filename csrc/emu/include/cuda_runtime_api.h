// The emulated build's stand-in for the CUDA toolkit's header of that name (csrc/emu): the runtime API of the
// emulated device. On the include path of the emulated build only.
#ifndef PERFKERN_EMU_CUDA_RUNTIME_API_H_
#define PERFKERN_EMU_CUDA_RUNTIME_API_H_

#include "perfkern_emu/runtime.h"
#include "perfkern_emu/types.h"

#endif  // PERFKERN_EMU_CUDA_RUNTIME_API_H_
