// The emulated CUDA runtime: one device (compute capability from PERFKERN_EMULATE_SM, 4 SMs), the per-thread
// last error, function attributes, and run_kernel: the launch checks of a GPU (block and grid sizes, dynamic
// shared memory against the opt-in), then the grid run by the scheduler before it returns. A kernel fault is
// reported as cudaErrorLaunchFailure (or a more specific code) with the emulator's diagnosis as its string;
// unlike on a GPU it is not sticky: the next launch runs.
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>

#include "emu/internal.h"

namespace perfkern {
namespace emu {
namespace {

constexpr int kSms = 4;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kDefaultSmem = 48 * 1024;

struct Device {
  int sm = 90;
  std::string problem;  // why there is no device ("" when there is one)
  size_t smem_optin = 0;
  uint64_t seed = 0;
};

const Device& device() {
  static const Device d = [] {
    Device out;
    const char* sm = std::getenv("PERFKERN_EMULATE_SM");
    const std::string value = sm == nullptr ? "" : sm;
    if (value.empty() || value == "90") {
      out.sm = 90;
      out.smem_optin = 227 * 1024;
    } else if (value == "80") {
      out.sm = 80;
      out.smem_optin = 163 * 1024;
    } else {
      out.problem = "PERFKERN_EMULATE_SM must be 80 or 90, got '" + value + "'";
    }
    const char* seed = std::getenv("PERFKERN_EMULATE_SEED");
    if (seed != nullptr && *seed != '\0') {
      out.seed = std::strtoull(seed, nullptr, 0);
    } else {
      std::random_device rd;
      out.seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    }
    return out;
  }();
  return d;
}

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local std::string t_last_message;
thread_local int t_device = 0;

std::mutex g_attr_mu;
std::map<const void*, int> g_max_dynamic_smem;
std::atomic<uint64_t> g_launches{0};

cudaError_t fail(cudaError_t code, const std::string& message) {
  set_last_error(code, message);
  return code;
}

cudaError_t check_device(int dev) {
  if (!device().problem.empty()) {
    return fail(cudaErrorNoDevice, device().problem);
  }
  if (dev != 0) {
    return fail(cudaErrorInvalidDevice, "invalid device ordinal " + std::to_string(dev) +
                                            " (the emulator has one device, 0)");
  }
  return cudaSuccess;
}

const char* static_string(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInitializationError:
      return "initialization error";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInsufficientDriver:
      return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorInvalidDeviceFunction:
      return "invalid device function";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorNoKernelImageForDevice:
      return "no kernel image is available for execution on the device";
    case cudaErrorIllegalAddress:
      return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources:
      return "too many resources requested for launch";
    case cudaErrorIllegalInstruction:
      return "an illegal instruction was encountered";
    case cudaErrorMisalignedAddress:
      return "misaligned address";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
  }
  return "unknown error";
}

}  // namespace

int emulated_sm() { return device().sm; }

void set_last_error(cudaError_t code, const std::string& message) {
  t_last_error = code;
  t_last_message = std::string(static_string(code)) + " (emulator: " + message + ")";
}

cudaError_t get_last_error() {
  const cudaError_t err = t_last_error;
  t_last_error = cudaSuccess;
  return err;
}

cudaError_t peek_at_last_error() { return t_last_error; }

const char* error_string(cudaError_t err) {
  // The detailed message of the calling thread's last error, when that is the error asked about.
  if (err != cudaSuccess && !t_last_message.empty() &&
      t_last_message.compare(0, std::strlen(static_string(err)), static_string(err)) == 0) {
    return t_last_message.c_str();
  }
  return static_string(err);
}

cudaError_t get_device_count(int* count) {
  *count = 0;
  if (!device().problem.empty()) {
    return fail(cudaErrorNoDevice, device().problem);
  }
  *count = 1;
  return cudaSuccess;
}

cudaError_t get_device(int* dev) {
  *dev = t_device;
  return device().problem.empty() ? cudaSuccess : fail(cudaErrorNoDevice, device().problem);
}

cudaError_t set_device(int dev) {
  const cudaError_t err = check_device(dev);
  if (err == cudaSuccess) {
    t_device = dev;
  }
  return err;
}

cudaError_t device_get_attribute(int* value, cudaDeviceAttr attr, int dev) {
  const cudaError_t err = check_device(dev);
  if (err != cudaSuccess) {
    return err;
  }
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = kMaxThreadsPerBlock;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = static_cast<int>(kDefaultSmem);
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = 32;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = kSms;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = device().sm / 10;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = device().sm % 10;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(device().smem_optin);
      return cudaSuccess;
  }
  return fail(cudaErrorInvalidValue, "device attribute " + std::to_string(static_cast<int>(attr)) +
                                         " is not emulated");
}

cudaError_t get_device_properties(cudaDeviceProp* prop, int dev) {
  const cudaError_t err = check_device(dev);
  if (err != cudaSuccess) {
    return err;
  }
  *prop = cudaDeviceProp{};
  const std::string name = "perfkern emulated sm_" + std::to_string(device().sm) + " (CPU)";
  std::strncpy(prop->name, name.c_str(), sizeof(prop->name) - 1);
  prop->totalGlobalMem = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
  prop->sharedMemPerBlock = kDefaultSmem;
  prop->sharedMemPerBlockOptin = device().smem_optin;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = kMaxThreadsPerBlock;
  prop->multiProcessorCount = kSms;
  prop->major = device().sm / 10;
  prop->minor = device().sm % 10;
  return cudaSuccess;
}

cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) {
    return fail(cudaErrorInvalidValue, "function attribute " + std::to_string(static_cast<int>(attr)) +
                                           " is not emulated");
  }
  if (value < 0 || static_cast<size_t>(value) > device().smem_optin) {
    return fail(cudaErrorInvalidValue, "max dynamic shared memory " + std::to_string(value) + " bytes: sm_" +
                                           std::to_string(device().sm) + " allows at most " +
                                           std::to_string(device().smem_optin));
  }
  std::lock_guard<std::mutex> lock(g_attr_mu);
  g_max_dynamic_smem[func] = value;
  return cudaSuccess;
}

cudaError_t func_get_attributes(cudaFuncAttributes* attr, const void* func) {
  if (!device().problem.empty()) {
    return fail(cudaErrorNoDevice, device().problem);
  }
  *attr = cudaFuncAttributes{};
  std::lock_guard<std::mutex> lock(g_attr_mu);
  const auto it = g_max_dynamic_smem.find(func);
  attr->maxDynamicSharedSizeBytes = it == g_max_dynamic_smem.end() ? static_cast<int>(kDefaultSmem) : it->second;
  attr->maxThreadsPerBlock = kMaxThreadsPerBlock;
  // One binary serves both emulated architectures: it "is" the device's.
  attr->ptxVersion = device().sm;
  attr->binaryVersion = device().sm;
  return cudaSuccess;
}

void run_kernel(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream,
                KernelEntry entry, void* closure) {
  (void)stream;  // launches are synchronous: every stream is the same one
  const std::string what = std::string("launch of '") + name + "'";
  if (!device().problem.empty()) {
    fail(cudaErrorNoDevice, device().problem);
    return;
  }
  if (tls_worker != nullptr) {
    fail(cudaErrorLaunchFailure, what + " from inside a kernel: dynamic parallelism is not emulated");
    return;
  }
  const int64_t threads = static_cast<int64_t>(block.x) * block.y * block.z;
  if (threads < 1 || threads > kMaxThreadsPerBlock || block.z > 64) {
    fail(cudaErrorInvalidConfiguration, what + ": block (" + std::to_string(block.x) + ", " +
                                            std::to_string(block.y) + ", " + std::to_string(block.z) +
                                            ") is not 1 to 1024 threads with z <= 64");
    return;
  }
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    fail(cudaErrorInvalidConfiguration, what + ": grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) +
                                            ", " + std::to_string(grid.z) + ") is out of range");
    return;
  }
  size_t allowed = kDefaultSmem;
  {
    std::lock_guard<std::mutex> lock(g_attr_mu);
    const auto it = g_max_dynamic_smem.find(kernel);
    if (it != g_max_dynamic_smem.end()) {
      allowed = std::max(allowed, static_cast<size_t>(it->second));
    }
  }
  if (smem_bytes > allowed) {
    fail(cudaErrorInvalidValue, what + ": " + std::to_string(smem_bytes) +
                                    " bytes of dynamic shared memory, more than the " + std::to_string(allowed) +
                                    " its cudaFuncAttributeMaxDynamicSharedMemorySize allows");
    return;
  }
  Launch L;
  L.name = name;
  L.grid = grid;
  L.block_dim = block;
  L.block_threads = static_cast<int>(threads);
  L.blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  L.entry = entry;
  L.closure = closure;
  L.seed = device().seed;
  L.index = g_launches.fetch_add(1);
  L.sm = device().sm;
  // The dynamic shared memory starts 16-byte aligned but never 1024-byte aligned, as after static shared
  // memory on a GPU: kernels that need more alignment must make it themselves.
  uint64_t s = L.seed + L.index * 0x9e3779b97f4a7c15ull;
  s = (s ^ (s >> 31)) * 0xbf58476d1ce4e5b9ull;
  L.dyn_offset = 16 * (1 + static_cast<size_t>((s >> 17) % 63));
  L.dyn_size = smem_bytes;
  L.window_size = L.dyn_offset + smem_bytes;
  run_blocks(L);
  if (L.failed.load()) {
    fail(L.code, L.message);
  }
}

}  // namespace emu
}  // namespace perfkern
