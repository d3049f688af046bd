# cmake -P script behind the ctest install.find_package (see CMakeLists.txt here for the -D
# arguments). Steps: (a) cmake --install the main build tree into WORK_DIR/prefix, (b) configure
# and build consumer/ against it, (c) run the consumer with the installed libnuri.
cmake_minimum_required(VERSION 3.25)

if(NOT DEFINED EXECUTABLE OR EXECUTABLE STREQUAL "")
  set(EXECUTABLE consumer)  # the program of CONSUMER_SOURCE_DIR to run, with RUN_ARGS
endif()
if(NOT DEFINED TEST_NAME OR TEST_NAME STREQUAL "")
  set(TEST_NAME install.find_package)
endif()
separate_arguments(run_args UNIX_COMMAND "${RUN_ARGS}")

foreach(var NURI_BUILD_DIR GENERATOR CXX_COMPILER CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "install_test.cmake: -D${var}=... is required")
  endif()
endforeach()

set(prefix "${WORK_DIR}/prefix")
set(consumer_build "${WORK_DIR}/consumer-build")
file(REMOVE_RECURSE "${WORK_DIR}")  # a fresh prefix and consumer tree every run
file(MAKE_DIRECTORY "${WORK_DIR}")

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc COMMAND_ECHO STDOUT)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${TEST_NAME}: ${what} failed (${rc})")
  endif()
endfunction()

# ---- (a) install ---------------------------------------------------------------------------------
set(config_args)
if(NURI_CONFIG)
  set(config_args --config "${NURI_CONFIG}")
endif()
run_step("cmake --install"
  "${CMAKE_COMMAND}" --install "${NURI_BUILD_DIR}" --prefix "${prefix}" ${config_args})

file(GLOB_RECURSE installed_libs LIST_DIRECTORIES false "${prefix}/*/libnuri.so*"
     "${prefix}/*/libnuri.a")
list(LENGTH installed_libs n)
if(n EQUAL 0)
  message(FATAL_ERROR "${TEST_NAME}: no libnuri under ${prefix}")
endif()
list(GET installed_libs 0 lib)
get_filename_component(libdir "${lib}" DIRECTORY)

# ---- (b) configure and build the consumer --------------------------------------------------------
set(configure_args
  -S "${CONSUMER_SOURCE_DIR}" -B "${consumer_build}" -G "${GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
  "-DCMAKE_PREFIX_PATH=${prefix}"
  "-DCMAKE_BUILD_RPATH=${libdir}"
  # only the prefix: no package registry, no nuri installed elsewhere on the machine
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(NURI_CONFIG)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${NURI_CONFIG}")
endif()
if(NURI_SANITIZE)
  # A sanitized libnuri needs the sanitizer runtime first in the executable that loads it.
  list(APPEND configure_args "-DCMAKE_CXX_FLAGS=-fsanitize=address,undefined"
       "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined")
endif()
run_step("configuring the consumer" "${CMAKE_COMMAND}" ${configure_args})

# find_package must have found the installed package, not the build tree or another copy.
file(STRINGS "${consumer_build}/CMakeCache.txt" nuri_dir_line REGEX "^nuri_DIR:")
string(REGEX REPLACE "^nuri_DIR:[A-Z]+=" "" nuri_dir "${nuri_dir_line}")
file(REAL_PATH "${prefix}" real_prefix)
file(REAL_PATH "${nuri_dir}" real_nuri_dir)
string(FIND "${real_nuri_dir}" "${real_prefix}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "${TEST_NAME}: nuri_DIR is '${nuri_dir}', not under ${prefix}")
endif()

run_step("building the consumer" "${CMAKE_COMMAND}" --build "${consumer_build}" ${config_args})

# ---- (c) run it against the installed library ----------------------------------------------------
file(GLOB_RECURSE exe LIST_DIRECTORIES false "${consumer_build}/${EXECUTABLE}")
if(NOT exe)
  message(FATAL_ERROR "${TEST_NAME}: no ${EXECUTABLE} executable in ${consumer_build}")
endif()
list(GET exe 0 exe)
# The build RPATH already points at ${libdir}; LD_LIBRARY_PATH is for toolchains that ignore it.
set(ld_path "${libdir}")
if(DEFINED ENV{LD_LIBRARY_PATH} AND NOT "$ENV{LD_LIBRARY_PATH}" STREQUAL "")
  string(APPEND ld_path ":$ENV{LD_LIBRARY_PATH}")
endif()
set(ENV{LD_LIBRARY_PATH} "${ld_path}")

# libnuri must resolve to the installed copy (ldd ships with glibc; skip the check without it).
find_program(LDD ldd)
if(LDD AND lib MATCHES "\\.so")
  execute_process(COMMAND "${LDD}" "${exe}" OUTPUT_VARIABLE ldd_out RESULT_VARIABLE rc)
  string(REGEX MATCH "libnuri\\.so[^\n]*" nuri_line "${ldd_out}")
  message(STATUS "consumer loads: ${nuri_line}")
  file(REAL_PATH "${libdir}" real_libdir)
  string(FIND "${nuri_line}" "=> ${libdir}/" at1)
  string(FIND "${nuri_line}" "=> ${real_libdir}/" at2)
  if(at1 EQUAL -1 AND at2 EQUAL -1)
    message(FATAL_ERROR "${TEST_NAME}: the consumer does not load libnuri from ${libdir}:\n"
                        "${ldd_out}")
  endif()
endif()

run_step("running ${EXECUTABLE}" "${exe}" ${run_args})
