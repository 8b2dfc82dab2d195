// The emulated build's stand-in for the CUDA toolkit's header of that name (csrc/emu): the runtime API, the
// device-side language and the PTX instructions' host twins. On the include path of the emulated build only.
#ifndef PERFKERN_EMU_CUDA_RUNTIME_H_
#define PERFKERN_EMU_CUDA_RUNTIME_H_

#include "cuda_runtime_api.h"
#include "perfkern_emu/device.h"
#include "perfkern_emu/ptx.h"

#endif  // PERFKERN_EMU_CUDA_RUNTIME_H_
