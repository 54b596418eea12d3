# Build-speed helpers (included before any target is created).
#
# 1) ccache: used for C++ and CUDA when found on PATH (LRPFAST_CCACHE=OFF turns it off).
# 2) Stable include paths. `pip install .` builds in a fresh isolated environment each time, so
#    the headers of pybind11 and scipy-openblas32 sit under a new /tmp/pip-build-env-* path on
#    every run. A changed -I path changes every compile command, and Ninja then recompiles
#    everything although nothing changed. lrpfast_stage_headers() copies such a header tree into
#    the (persistent) build directory, rewriting a file only when its content differs, so the
#    compile commands and header timestamps stay the same from one `pip install` to the next.
# 3) Kept objects. Seeing a new isolated environment, scikit-build-core deletes CMakeCache.txt
#    and CMakeFiles/ of the build directory, and with CMakeFiles/ every object file. After each
#    link, lrpfast_keep_objects() copies the target's object directory (timestamps kept) to
#    <build>/kept-objects; configuring puts missing ones back, so Ninja (whose logs stay in the
#    build directory) sees them up to date and the README's second command (`pip install
#    ".[test]"` after `pip install .`) recompiles and relinks nothing.
option(LRPFAST_CCACHE "Use ccache for C++ and CUDA when it is on PATH" ON)
if(LRPFAST_CCACHE)
  find_program(LRPFAST_CCACHE_PROGRAM ccache)
  if(LRPFAST_CCACHE_PROGRAM)
    set(CMAKE_CXX_COMPILER_LAUNCHER "${LRPFAST_CCACHE_PROGRAM}")
    set(CMAKE_CUDA_COMPILER_LAUNCHER "${LRPFAST_CCACHE_PROGRAM}")
    message(STATUS "lrpfast: compiling through ${LRPFAST_CCACHE_PROGRAM}")
  endif()
endif()

# Copy the tree `src` to `dest` (content-compared, file by file); sets ${out} to `dest`.
function(lrpfast_stage_headers src dest out)
  file(GLOB_RECURSE _files LIST_DIRECTORIES false RELATIVE "${src}" "${src}/*")
  foreach(_f IN LISTS _files)
    get_filename_component(_dir "${dest}/${_f}" DIRECTORY)
    file(MAKE_DIRECTORY "${_dir}")
    file(COPY_FILE "${src}/${_f}" "${dest}/${_f}" ONLY_IF_DIFFERENT)
  endforeach()
  set(${out} "${dest}" PARENT_SCOPE)
endfunction()

# Point pybind11's imported header target(s) at a staged copy of its include directory.
function(lrpfast_stage_pybind11)
  lrpfast_stage_headers("${pybind11_INCLUDE_DIR}" "${CMAKE_BINARY_DIR}/staged/pybind11" _staged)
  foreach(_t pybind11::pybind11_headers pybind11::headers)
    if(TARGET ${_t})
      get_target_property(_aliased ${_t} ALIASED_TARGET)
      get_target_property(_inc ${_t} INTERFACE_INCLUDE_DIRECTORIES)
      if(NOT _aliased AND _inc)
        list(TRANSFORM _inc REPLACE "^${pybind11_INCLUDE_DIR}$" "${_staged}")
        set_property(TARGET ${_t} PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${_inc}")
      endif()
    endif()
  endforeach()
endfunction()

set(LRPFAST_KEPT_OBJECTS "${CMAKE_BINARY_DIR}/kept-objects")
file(GLOB _lrp_kept LIST_DIRECTORIES true "${LRPFAST_KEPT_OBJECTS}/*.dir")
foreach(_d IN LISTS _lrp_kept)
  get_filename_component(_n "${_d}" NAME)
  if(NOT EXISTS "${CMAKE_BINARY_DIR}/CMakeFiles/${_n}")
    file(COPY "${_d}" DESTINATION "${CMAKE_BINARY_DIR}/CMakeFiles")  # keeps the timestamps
  endif()
endforeach()

# After `target` links, keep a copy of the object directories of the targets listed.
function(lrpfast_keep_objects target)
  foreach(_t IN LISTS ARGN)
    add_custom_command(TARGET ${target} POST_BUILD
      # plain rm / mkdir / cp, not `cmake -E`: the path of cmake changes with every isolated
      # build environment, and a changed link command would relink every time
      COMMAND rm -rf "${LRPFAST_KEPT_OBJECTS}/${_t}.dir"
      COMMAND mkdir -p "${LRPFAST_KEPT_OBJECTS}"
      COMMAND cp -p -R "${CMAKE_BINARY_DIR}/CMakeFiles/${_t}.dir" "${LRPFAST_KEPT_OBJECTS}/"
      VERBATIM)
  endforeach()
endfunction()
