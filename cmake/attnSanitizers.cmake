# Sanitizers and fuzzers for attn's own targets (tests, examples, benchmarks).
#
#   ATTN_SANITIZE         "" (default), or a -fsanitize= list for GCC/clang, e.g.
#                         "address,undefined" or "thread". Adds
#                           -fsanitize=<list> -fno-sanitize-recover=all
#                           -fno-omit-frame-pointer -g1 -O1
#                         to the compile and link of every target created after this
#                         file is included, in this directory and below: attn's own
#                         tests, examples and benchmarks. The attn / attn::io interface
#                         targets carry none of it, so nothing reaches users. With a
#                         sanitizer, the packaging tests (header self-containment,
#                         consumer projects) are not configured: they test the install,
#                         not the code. -O1 (tests too, see tests/CMakeLists.txt) and
#                         -g1 (line tables, enough for the reports' stack traces): with
#                         UBSan, Eigen code at -O2 -g compiles about 4 times slower.
#   ATTN_BUILD_FUZZERS    OFF (default). ON (clang only): builds the libFuzzer targets in
#                         tests/fuzz/ with -fsanitize=fuzzer,address,undefined.
#
# Included by the top-level CMakeLists.txt before the test/example/bench directories.
include_guard(GLOBAL)

set(ATTN_SANITIZE "" CACHE STRING
    "Sanitizers for attn's own targets, as a -fsanitize= list (e.g. address,undefined or thread); empty = none")
option(ATTN_BUILD_FUZZERS "Build the libFuzzer targets in tests/fuzz (needs clang)" OFF)

if(ATTN_SANITIZE)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "attn: ATTN_SANITIZE needs GCC or clang (compiler is ${CMAKE_CXX_COMPILER_ID})")
  endif()
  if(ATTN_SANITIZE MATCHES "thread" AND ATTN_SANITIZE MATCHES "address")
    message(FATAL_ERROR "attn: ATTN_SANITIZE: thread and address sanitizers cannot be combined")
  endif()
  set(_attn_sanitize_flags
    "-fsanitize=${ATTN_SANITIZE}" -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_compile_options(${_attn_sanitize_flags} -g1 -O1)
  add_link_options(${_attn_sanitize_flags})
  if(ATTN_SANITIZE MATCHES "thread" AND ATTN_USES_OPENMP)
    message(WARNING "attn: ThreadSanitizer with OpenMP: libgomp is not instrumented, so TSan "
                    "reports false races inside OpenMP regions; configure with -DATTN_OPENMP=OFF")
  endif()
  message(STATUS "attn: own targets built with -fsanitize=${ATTN_SANITIZE}")
endif()

if(ATTN_BUILD_FUZZERS AND NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "attn: ATTN_BUILD_FUZZERS needs clang (libFuzzer); "
                      "configure with -DCMAKE_CXX_COMPILER=clang++")
endif()
