# BLAS: the OpenBLAS build that PyPI ships as `scipy-openblas32` (symbols prefixed `scipy_`).
# It is a build requirement and a run-time dependency, so no system BLAS is needed anywhere.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import scipy_openblas32 as s; print(s.get_include_dir()); print(s.get_lib_dir()); print(s.get_library()); print(s.__version__)"
  OUTPUT_VARIABLE _sob_out RESULT_VARIABLE _sob_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _sob_rc EQUAL 0)
  message(FATAL_ERROR "lrpfast: the Python package scipy-openblas32 is required to build "
                      "(pip install scipy-openblas32); it provides the BLAS lrpfast links.")
endif()
string(REPLACE "\n" ";" _sob_list "${_sob_out}")
list(GET _sob_list 0 SOB_INCLUDE)
list(GET _sob_list 1 SOB_LIBDIR)
list(GET _sob_list 2 SOB_LIBNAME)
list(GET _sob_list 3 SOB_VERSION)
find_library(SOB_LIBRARY NAMES ${SOB_LIBNAME} PATHS ${SOB_LIBDIR} NO_DEFAULT_PATH REQUIRED)
add_library(lrpfast_blas INTERFACE)
add_library(lrpfast::blas ALIAS lrpfast_blas)
if(NOT COMMAND lrpfast_stage_headers)  # a project that includes only this file
  include(${CMAKE_CURRENT_LIST_DIR}/lrpfast_build.cmake)
endif()
# staged: the isolated build environment's path changes with every `pip install` (lrpfast_build)
lrpfast_stage_headers("${SOB_INCLUDE}" "${CMAKE_BINARY_DIR}/staged/scipy_openblas32" SOB_INCLUDE)
target_include_directories(lrpfast_blas INTERFACE ${SOB_INCLUDE})
# the library too (the link line names it): a changed path would relink the modules each time
get_filename_component(_sob_name "${SOB_LIBRARY}" NAME)
set(_sob_staged "${CMAKE_BINARY_DIR}/staged/scipy_openblas32_lib/${_sob_name}")
file(MAKE_DIRECTORY "${CMAKE_BINARY_DIR}/staged/scipy_openblas32_lib")
file(COPY_FILE "${SOB_LIBRARY}" "${_sob_staged}" ONLY_IF_DIFFERENT)
target_link_libraries(lrpfast_blas INTERFACE "${_sob_staged}")
target_compile_definitions(lrpfast_blas INTERFACE LRPFAST_BLAS_PREFIX_SCIPY=1)
set(LRPFAST_BLAS_NAME "scipy-openblas32 ${SOB_VERSION} (OpenBLAS)")
message(STATUS "lrpfast: BLAS = ${LRPFAST_BLAS_NAME}: ${SOB_LIBRARY}")
