# The emulated flavour of the core (PERFKERN_EMULATE=ON): the CUDA sources, unchanged, compiled as host C++
# against csrc/emu, which stands in for the CUDA toolkit's headers and executes the kernels on the CPU (fibers
# per CUDA thread, warp and warpgroup rendezvous, the PTX instructions written from the ISA). No CUDA toolkit is
# needed. Included from CMakeLists.txt.
set(PERFKERN_EMU_SOURCES
  csrc/emu/fiber.cpp
  csrc/emu/instructions.cpp
  csrc/emu/runtime.cpp
  csrc/emu/scheduler.cpp)
# The kernels at -O1: the emulator's own code (-O3 in Release) sets the speed of an emulated run, and -O3 on the
# kernels' heavily templated host build triples its compile time (which every rebuild of the mutation script
# pays).
set_source_files_properties(${PERFKERN_CUDA_SOURCES} PROPERTIES LANGUAGE CXX COMPILE_OPTIONS "-O1")
find_package(Threads REQUIRED)

add_library(perfkern_objects OBJECT ${PERFKERN_HOST_SOURCES} ${PERFKERN_CUDA_SOURCES} ${PERFKERN_EMU_SOURCES})
# csrc/emu/include (cuda_runtime.h, cuda_fp16.h, ...) comes before any CUDA toolkit on the include path, and
# only for the core's own objects: the public header declares cudaStream_t itself without it.
target_include_directories(perfkern_objects BEFORE PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/csrc/emu/include")
target_compile_definitions(perfkern_objects PRIVATE PERFKERN_EMULATE=1)
# The kernels' `#pragma unroll` is nvcc's.
target_compile_options(perfkern_objects PRIVATE -Wno-unknown-pragmas)

function(perfkern_link_runtime target)
  target_link_libraries(${target} PRIVATE Threads::Threads)
endfunction()
