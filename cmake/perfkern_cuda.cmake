# The CUDA flavour of the core: the CUDA language, the -gencode flags of PERFKERN_CUDA_ARCHS, and the
# object library with the CUDA sources. Included from CMakeLists.txt when PERFKERN_WITH_CUDA is on.
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_EXTENSIONS OFF)
set(CMAKE_CUDA_VISIBILITY_PRESET hidden)
find_package(CUDAToolkit REQUIRED)

# The -gencode flags are generated here rather than through CMAKE_CUDA_ARCHITECTURES so that
# arch-specific targets such as 90a come out as "-gencode=arch=compute_90a,code=sm_90a" whatever the
# CMake version.
set(CMAKE_CUDA_ARCHITECTURES OFF)
set(PERFKERN_CUDA_GENCODE_FLAGS "")
set(_perfkern_lowest_plain "")
foreach(_arch IN LISTS PERFKERN_CUDA_ARCHS)
  if(NOT _arch MATCHES "^([0-9]+)([af]?)$")
    message(FATAL_ERROR "PERFKERN_CUDA_ARCHS: '${_arch}' is not an architecture like 80, 86 or 90a")
  endif()
  list(APPEND PERFKERN_CUDA_GENCODE_FLAGS "-gencode=arch=compute_${_arch},code=sm_${_arch}")
  if(CMAKE_MATCH_2 STREQUAL "" AND (_perfkern_lowest_plain STREQUAL "" OR _arch LESS _perfkern_lowest_plain))
    set(_perfkern_lowest_plain "${_arch}")
  endif()
endforeach()
if(PERFKERN_CUDA_GENCODE_FLAGS STREQUAL "")
  message(FATAL_ERROR "PERFKERN_CUDA_ARCHS is empty")
endif()
if(PERFKERN_CUDA_PTX AND NOT _perfkern_lowest_plain STREQUAL "")
  list(APPEND PERFKERN_CUDA_GENCODE_FLAGS
       "-gencode=arch=compute_${_perfkern_lowest_plain},code=compute_${_perfkern_lowest_plain}")
endif()
message(STATUS "perfkern: CUDA archs ${PERFKERN_CUDA_ARCHS}: ${PERFKERN_CUDA_GENCODE_FLAGS}")

add_library(perfkern_objects OBJECT ${PERFKERN_HOST_SOURCES} ${PERFKERN_CUDA_SOURCES})
set_target_properties(perfkern_objects PROPERTIES CUDA_ARCHITECTURES OFF)
target_link_libraries(perfkern_objects PUBLIC CUDA::toolkit)
target_compile_options(perfkern_objects PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:${PERFKERN_CUDA_GENCODE_FLAGS} -Xcompiler=-Wall,-Wextra,-Wno-unknown-pragmas
                              -Wno-deprecated-gpu-targets>)

# The CUDA runtime is linked statically, its symbols kept private to each binary, so the library and the
# Python module load on machines without a GPU or driver and never clash with another libcudart.
function(perfkern_link_runtime target)
  target_link_libraries(${target} PUBLIC CUDA::toolkit PRIVATE CUDA::cudart_static)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    target_link_options(${target} PRIVATE "LINKER:--exclude-libs,ALL")
  endif()
endfunction()
