// The CUDA runtime API the core's sources call, for the emulated build: one emulated device (compute capability
// from PERFKERN_EMULATE_SM, 80 or 90; 4 SMs), host memory as device memory, launches that run the kernel on the
// CPU before they return. The implementations live in namespace perfkern::emu (csrc/emu/runtime.cpp) and are
// not exported, so the library can share a process with libcudart; the cuda* names below are inline forwarders.
#ifndef PERFKERN_EMU_RUNTIME_H_
#define PERFKERN_EMU_RUNTIME_H_

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include "perfkern_emu/types.h"

namespace perfkern {
namespace emu {

cudaError_t get_last_error();
cudaError_t peek_at_last_error();
const char* error_string(cudaError_t err);
cudaError_t get_device_count(int* count);
cudaError_t get_device(int* device);
cudaError_t set_device(int device);
cudaError_t device_get_attribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t get_device_properties(cudaDeviceProp* prop, int device);
cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t func_get_attributes(cudaFuncAttributes* attr, const void* func);

// Runs entry(closure) as every thread of every block of the grid; sets the calling thread's last error on a
// bad configuration or a fault of the kernel.
using KernelEntry = void (*)(void* closure);
void run_kernel(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream,
                KernelEntry entry, void* closure);

// kernel<<<grid, block, smem_bytes, stream>>>(args...): the arguments are converted to the kernel's parameter
// types once, and every thread calls the kernel with its own copy, as on a GPU.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream,
            Args&&... args) {
  using Packed = std::tuple<std::decay_t<Params>...>;
  struct Closure {
    void (*kernel)(Params...);
    Packed args;
  };
  Closure closure{kernel, Packed(std::forward<Args>(args)...)};
  const KernelEntry entry = [](void* p) {
    Closure* c = static_cast<Closure*>(p);
    std::apply(c->kernel, c->args);
  };
  run_kernel(name, reinterpret_cast<const void*>(kernel), grid, block, smem_bytes, stream, entry, &closure);
}

// The calling thread's block's dynamic shared memory.
void* dynamic_smem_base();

template <typename T>
T* dynamic_smem() {
  return static_cast<T*>(dynamic_smem_base());
}

}  // namespace emu
}  // namespace perfkern

inline cudaError_t cudaGetLastError() { return perfkern::emu::get_last_error(); }
inline cudaError_t cudaPeekAtLastError() { return perfkern::emu::peek_at_last_error(); }
inline const char* cudaGetErrorString(cudaError_t err) { return perfkern::emu::error_string(err); }
inline cudaError_t cudaGetDeviceCount(int* count) { return perfkern::emu::get_device_count(count); }
inline cudaError_t cudaGetDevice(int* device) { return perfkern::emu::get_device(device); }
inline cudaError_t cudaSetDevice(int device) { return perfkern::emu::set_device(device); }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  return perfkern::emu::device_get_attribute(value, attr, device);
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  return perfkern::emu::get_device_properties(prop, device);
}
// Launches are synchronous: nothing is ever pending.
inline cudaError_t cudaDeviceSynchronize() { return perfkern::emu::peek_at_last_error(); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return perfkern::emu::peek_at_last_error(); }

template <typename T>
cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  return perfkern::emu::func_set_attribute(reinterpret_cast<const void*>(func), attr, value);
}

template <typename T>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, T* func) {
  return perfkern::emu::func_get_attributes(attr, reinterpret_cast<const void*>(func));
}

#endif  // PERFKERN_EMU_RUNTIME_H_
