# attn_set_target_options(<target> [NATIVE] [ARCH <flags>...])
#
# Compile options for attn's *own* targets (tests, examples, benchmarks,
# header checks). Never used on the attn / attn_io interface targets, so
# nothing here leaks to users of the library.
#
#   - warnings: -Wall -Wextra -Wpedantic (+ -Werror when ATTN_WERROR=ON)
#   - NATIVE:   -O3 -march=native when ATTN_NATIVE=ON (not in Debug builds); in a
#               sanitized tree (ATTN_SANITIZE) -march=native only: the optimisation level
#               stays the sanitizers' -O1 (attnSanitizers.cmake explains why)
#   - ARCH:     the same with these instruction-set flags instead of -march=native (the
#               test builds for other machine kinds, tests/CMakeLists.txt), whatever ATTN_NATIVE
#   - strict ISO C++ (CXX_EXTENSIONS OFF: -std=c++17, not gnu++17), so the
#     headers are checked without GNU extensions
include_guard(GLOBAL)

function(attn_set_target_options target)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "NATIVE" "" "ARCH")
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "attn_set_target_options: unknown arguments: ${ARG_UNPARSED_ARGUMENTS}")
  endif()

  set_target_properties(${target} PROPERTIES
    CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON CXX_EXTENSIONS OFF)

  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
    if(ATTN_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
    set(_arch "")
    if(ARG_ARCH)
      set(_arch ${ARG_ARCH})
    elseif(ARG_NATIVE AND ATTN_NATIVE)
      set(_arch -march=native)
    endif()
    if(_arch)
      if(ATTN_SANITIZE)
        target_compile_options(${target} PRIVATE ${_arch})
      else()
        target_compile_options(${target} PRIVATE $<$<NOT:$<CONFIG:Debug>>:-O3> ${_arch})
      endif()
      # GCC 12 false positive (GCC PR 105593, fixed in 13): with AVX-512
      # enabled, Eigen's packet code inlines _mm512_undefined_ps() from
      # <avx512fintrin.h> and -Wmaybe-uninitialized fires hundreds of times,
      # which -Werror would turn into a build failure on AVX-512 machines;
      # in Eigen's double exp (pexp_double, pldexp) it is even reported as
      # -Wuninitialized. Tests other than test_kernels_native are built
      # without -march=native and keep the warnings.
      if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU"
         AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
        target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized -Wno-uninitialized)
      endif()
    endif()
  elseif(MSVC)
    target_compile_options(${target} PRIVATE /W4 /permissive-)
    if(ATTN_WERROR)
      target_compile_options(${target} PRIVATE /WX)
    endif()
    if(ARG_NATIVE AND ATTN_NATIVE)
      target_compile_options(${target} PRIVATE $<$<NOT:$<CONFIG:Debug>>:/O2>)
    endif()
  endif()
endfunction()
