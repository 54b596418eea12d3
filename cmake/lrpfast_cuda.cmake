# CUDA is optional: LRPFAST_CUDA=AUTO (default) builds the CUDA engine (the separate extension
# module lrpfast._cuda) only when a CUDA compiler and cuBLAS are found, OFF never does, ON fails
# when either is missing. _core never links any CUDA library, so a CUDA build imports and runs on a
# machine without GPU or driver (lrpfast.cuda loads _cuda lazily).
#
# cuBLAS: from the CUDA toolkit when it has one, else from the PyPI wheel nvidia-cublas (same major
# version as nvcc): used when importable by ${Python_EXECUTABLE}, else fetched at configure time
# into <build>/cublas-wheel with pip. No network -> a clear message and a CPU-only build (AUTO).
#
# Architectures: SASS for sm_75 (Turing), sm_80 (Ampere; its SASS also runs on sm_86 / sm_87 /
# sm_89, same major version), sm_90 (Hopper), sm_100 (Blackwell B100/B200, also sm_103) and sm_120
# (Blackwell RTX), plus compute_80 PTX that the driver compiles once for any newer GPU. Five SASS
# targets instead of one per minor version keep the build short. Never `native`: it fails at
# configure time on machines without a GPU. Override with -DCMAKE_CUDA_ARCHITECTURES=...
#
# Sets LRPFAST_WITH_CUDA (ON when the target _cuda is built).
set(LRPFAST_CUDA "AUTO" CACHE STRING "Build the CUDA engine: AUTO, ON or OFF")
set_property(CACHE LRPFAST_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${LRPFAST_CUDA}" _lrp_cuda_mode)
set(LRPFAST_WITH_CUDA OFF)
file(GLOB LRPFAST_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/cuda/kernels/*.cu)

# Message and bail out (AUTO) or fail (ON).
macro(_lrpfast_cuda_skip why)
  if(_lrp_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "lrpfast: LRPFAST_CUDA=ON but ${why}")
  endif()
  message(STATUS "lrpfast: CUDA engine skipped: ${why} (CPU-only build)")
endmacro()

function(_lrpfast_find_cublas_wheel root out_inc out_lib out_lt)
  file(GLOB_RECURSE _hdr "${root}/nvidia/*/cublas_v2.h")
  file(GLOB_RECURSE _lib "${root}/nvidia/*/libcublas.so.*")
  file(GLOB_RECURSE _lt "${root}/nvidia/*/libcublasLt.so.*")
  set(${out_inc} "" PARENT_SCOPE)
  if(_hdr AND _lib)
    list(GET _hdr 0 _hdr)
    list(FILTER _lib EXCLUDE REGEX "\\.so\\.[0-9]+\\.")  # prefer the soname file libcublas.so.13
    list(GET _lib 0 _lib)
    get_filename_component(_inc "${_hdr}" DIRECTORY)
    set(${out_inc} "${_inc}" PARENT_SCOPE)
    set(${out_lib} "${_lib}" PARENT_SCOPE)
    if(_lt)
      list(GET _lt 0 _lt)
      set(${out_lt} "${_lt}" PARENT_SCOPE)
    endif()
  endif()
endfunction()
function(_lrpfast_cuda_target)
  string(REGEX MATCH "^[0-9]+" _cuda_major "${CUDAToolkit_VERSION}")

  # ---- cuBLAS -------------------------------------------------------------------------------
  set(_cublas_target "")
  set(_cublas_rpath "")
  if(TARGET CUDA::cublas AND EXISTS "${CUDAToolkit_LIBRARY_DIR}/libcublas.so")
    set(_cublas_target CUDA::cublas)
    set(_cublas_desc "CUDA toolkit (${CUDAToolkit_LIBRARY_DIR})")
  else()
    # 1) importable by the build's Python (e.g. `pip install nvidia-cublas` beforehand)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
        "import importlib.util as u; s = u.find_spec('nvidia'); print(list(s.submodule_search_locations)[0] if s else '')"
      OUTPUT_VARIABLE _nv_dir RESULT_VARIABLE _rc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    set(_inc "")
    if(_rc EQUAL 0 AND _nv_dir)
      get_filename_component(_nv_root "${_nv_dir}" DIRECTORY)
      _lrpfast_find_cublas_wheel("${_nv_root}" _inc _lib _lt)
      set(_cublas_desc "nvidia-cublas wheel importable by ${Python_EXECUTABLE}")
    endif()
    # 2) fetched into the build directory
    set(_wheel_dir "${CMAKE_BINARY_DIR}/cublas-wheel")
    if(NOT _inc)
      _lrpfast_find_cublas_wheel("${_wheel_dir}" _inc _lib _lt)
      set(_cublas_desc "nvidia-cublas wheel in ${_wheel_dir}")
    endif()
    if(NOT _inc)
      math(EXPR _next "${_cuda_major} + 1")
      set(_spec "nvidia-cublas>=${_cuda_major},<${_next}")
      message(STATUS "lrpfast: the CUDA toolkit has no cuBLAS; fetching '${_spec}' (~440 MB) into "
                     "${_wheel_dir}")
      execute_process(
        COMMAND "${Python_EXECUTABLE}" -m pip install --no-deps --disable-pip-version-check
                --target "${_wheel_dir}" "${_spec}"
        RESULT_VARIABLE _rc OUTPUT_VARIABLE _pip_out ERROR_VARIABLE _pip_err)
      if(NOT _rc EQUAL 0)
        # pip's isolated build environment hides the interpreter's own site-packages (and so pip
        # itself): retry with the isolation variables removed
        execute_process(
          COMMAND "${CMAKE_COMMAND}" -E env --unset=PYTHONPATH --unset=PYTHONNOUSERSITE
                  "${Python_EXECUTABLE}" -m pip install --no-deps --disable-pip-version-check
                  --target "${_wheel_dir}" "${_spec}"
          RESULT_VARIABLE _rc OUTPUT_VARIABLE _pip_out ERROR_VARIABLE _pip_err)
      endif()
      if(_rc EQUAL 0)
        _lrpfast_find_cublas_wheel("${_wheel_dir}" _inc _lib _lt)
      else()
        string(STRIP "${_pip_err}" _pip_err)
        message(STATUS "lrpfast: pip could not fetch ${_spec}: ${_pip_err}")
      endif()
    endif()
    if(NOT _inc)
      math(EXPR _next "${_cuda_major} + 1")
      _lrpfast_cuda_skip("no cuBLAS: the CUDA toolkit has none and the nvidia-cublas wheel could not be found or fetched (no network?). Install it with `pip install 'nvidia-cublas>=${_cuda_major},<${_next}'` and rebuild")
      return()
    endif()
    add_library(lrpfast_cublas SHARED IMPORTED)
    set_target_properties(lrpfast_cublas PROPERTIES
      IMPORTED_LOCATION "${_lib}"
      IMPORTED_NO_SONAME OFF
      INTERFACE_INCLUDE_DIRECTORIES "${_inc}")
    set(_cublas_target lrpfast_cublas)
    get_filename_component(_libdir "${_lib}" DIRECTORY)
    # run time: only the nvidia-cublas wheel next to lrpfast in site-packages (the [cuda] extra),
    # never a build-machine path (a wheel must not look into the builder's directories)
    get_filename_component(_sub "${_libdir}" DIRECTORY)
    get_filename_component(_sub "${_sub}" NAME)  # e.g. cu13
    set(_cublas_rpath "$ORIGIN/../nvidia/${_sub}/lib;$ORIGIN/../nvidia/cublas/lib")
    set(_cublas_desc "${_cublas_desc}: ${_lib}")
  endif()

  # ---- the extension module -----------------------------------------------------------------
  pybind11_add_module(_cuda MODULE src/cuda/bindings/module.cpp ${LRPFAST_CUDA_SOURCES})
  set_target_properties(_cuda PROPERTIES
    CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}"
    CUDA_SEPARABLE_COMPILATION OFF
    CUDA_RUNTIME_LIBRARY Static
    INSTALL_RPATH "$ORIGIN/../scipy_openblas32/lib;${_cublas_rpath}"
    BUILD_WITH_INSTALL_RPATH OFF)
  target_include_directories(_cuda PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src/cpp
                                           ${CMAKE_CURRENT_SOURCE_DIR}/src/cuda)
  # lrpfast_cpu: the CPU kernels, compiled once for _core and _cuda (CMakeLists.txt)
  target_link_libraries(_cuda PRIVATE ${_cublas_target} CUDA::cudart_static lrpfast_cpu)
  target_compile_options(_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-O3>
    $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr -Xcompiler=-fvisibility=hidden>)
  target_compile_definitions(_cuda PRIVATE LRPFAST_VERSION="${SKBUILD_PROJECT_VERSION}"
                                           LRPFAST_BLAS_NAME="${LRPFAST_BLAS_NAME}")
  lrpfast_keep_objects(_cuda _cuda)
  install(TARGETS _cuda LIBRARY DESTINATION lrpfast)
  message(STATUS "lrpfast: CUDA engine ON: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures "
                 "${CMAKE_CUDA_ARCHITECTURES}, cuBLAS from ${_cublas_desc}")
  set(LRPFAST_WITH_CUDA ON PARENT_SCOPE)
endfunction()

# enable_language() must run at file scope, hence this flag-driven flow instead of a function.
set(_lrp_cuda_ok OFF)
if(_lrp_cuda_mode STREQUAL "OFF")
  message(STATUS "lrpfast: CUDA engine disabled (LRPFAST_CUDA=OFF)")
elseif(NOT LRPFAST_CUDA_SOURCES)
  _lrpfast_cuda_skip("no sources in src/cuda/kernels")
else()
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    _lrpfast_cuda_skip("no CUDA compiler found (set CUDACXX or put nvcc on PATH)")
  else()
    set(_lrp_cuda_ok ON)
  endif()
endif()
if(_lrp_cuda_ok)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
    set(CMAKE_CUDA_ARCHITECTURES "75-real;80-real;90-real;100-real;120-real;80-virtual" CACHE STRING
        "lrpfast: CUDA architectures (no 'native': it needs a GPU at configure time)" FORCE)
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  enable_language(CUDA)  # before the CUDA target is created, so it gets CUDA_ARCHITECTURES
  find_package(CUDAToolkit REQUIRED)
  _lrpfast_cuda_target()
endif()
message(STATUS "lrpfast: CUDA engine = ${LRPFAST_WITH_CUDA}")
