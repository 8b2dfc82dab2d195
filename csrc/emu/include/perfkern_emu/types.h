// The CUDA runtime's plain types for the emulated build: error codes, dim3, the vector types (with CUDA's
// alignments, so a misaligned vector access is as wrong here as on a GPU), device attributes and properties.
// Only what the core's sources use, plus the everyday vector types kernels need.
#ifndef PERFKERN_EMU_TYPES_H_
#define PERFKERN_EMU_TYPES_H_

#include <cstddef>
#include <cstdint>

// The CUDA runtime's own declaration (driver_types.h), as perfkern.h also writes it.
typedef struct CUstream_st* cudaStream_t;

// The codes are CUDA's, so that messages and mappings read the same as on a GPU.
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorIllegalInstruction = 715,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError_t cudaError;

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int warpSize;
  int maxThreadsPerBlock;
  int multiProcessorCount;
  int major;
  int minor;
};

struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  int maxDynamicSharedSizeBytes;
  int maxThreadsPerBlock;
  int ptxVersion;
  int binaryVersion;
};

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define PERFKERN_EMU_VEC2(name, T, align)   \
  struct alignas(align) name {            \
    T x, y;                               \
  };                                      \
  inline name make_##name(T x, T y) { return name{x, y}; }
#define PERFKERN_EMU_VEC4(name, T, align)   \
  struct alignas(align) name {            \
    T x, y, z, w;                         \
  };                                      \
  inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

PERFKERN_EMU_VEC2(char2, signed char, 2)
PERFKERN_EMU_VEC2(uchar2, unsigned char, 2)
PERFKERN_EMU_VEC4(char4, signed char, 4)
PERFKERN_EMU_VEC4(uchar4, unsigned char, 4)
PERFKERN_EMU_VEC2(short2, short, 4)
PERFKERN_EMU_VEC2(ushort2, unsigned short, 4)
PERFKERN_EMU_VEC4(short4, short, 8)
PERFKERN_EMU_VEC4(ushort4, unsigned short, 8)
PERFKERN_EMU_VEC2(int2, int, 8)
PERFKERN_EMU_VEC2(uint2, unsigned int, 8)
PERFKERN_EMU_VEC4(int4, int, 16)
PERFKERN_EMU_VEC4(uint4, unsigned int, 16)
PERFKERN_EMU_VEC2(float2, float, 8)
PERFKERN_EMU_VEC4(float4, float, 16)
PERFKERN_EMU_VEC2(longlong2, long long, 16)
PERFKERN_EMU_VEC2(ulonglong2, unsigned long long, 16)
PERFKERN_EMU_VEC2(double2, double, 16)

#undef PERFKERN_EMU_VEC2
#undef PERFKERN_EMU_VEC4

#endif  // PERFKERN_EMU_TYPES_H_
