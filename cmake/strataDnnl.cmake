# cmake/strataDnnl.cmake: finds oneDNN behind STRATA_USE_DNNL.
#
# Debian's libdnnl-dev ships a CMake package, but its dnnl-config.cmake also requires OpenCL's
# development files (its GPU runtime), which strata does not use; so this defines the imported
# target strata::dnnl from the header and the library alone. The installed strataConfig.cmake
# includes this file too, so consumers find the same library.
function(strata_find_dnnl)
  if(TARGET strata::dnnl)
    return()
  endif()
  find_path(STRATA_DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.h)
  find_library(STRATA_DNNL_LIBRARY NAMES dnnl)
  if(NOT STRATA_DNNL_INCLUDE_DIR OR NOT STRATA_DNNL_LIBRARY)
    message(FATAL_ERROR
      "STRATA_USE_DNNL=ON but oneDNN was not found (header oneapi/dnnl/dnnl.h: "
      "${STRATA_DNNL_INCLUDE_DIR}; library dnnl: ${STRATA_DNNL_LIBRARY}). On Debian: "
      "apt-get install libdnnl-dev (or configure with -DSTRATA_USE_DNNL=OFF).")
  endif()
  set(version "")
  if(EXISTS "${STRATA_DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h")
    file(STRINGS "${STRATA_DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h" lines
         REGEX "#define DNNL_VERSION_(MAJOR|MINOR|PATCH) ")
    foreach(part MAJOR MINOR PATCH)
      string(REGEX MATCH "DNNL_VERSION_${part} ([0-9]+)" _ "${lines}")
      list(APPEND version "${CMAKE_MATCH_1}")
    endforeach()
    list(JOIN version "." version)
  endif()
  if(version VERSION_LESS 2.0)
    message(FATAL_ERROR "STRATA_USE_DNNL=ON needs oneDNN 2.0 or newer; found '${version}' "
                        "(${STRATA_DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h)")
  endif()
  add_library(strata::dnnl INTERFACE IMPORTED GLOBAL)
  set_target_properties(strata::dnnl PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${STRATA_DNNL_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${STRATA_DNNL_LIBRARY}")
  message(STATUS "strata: linear layers' float products through oneDNN ${version} (${STRATA_DNNL_LIBRARY})")
  set(STRATA_DNNL_LIBRARY "${STRATA_DNNL_LIBRARY}" PARENT_SCOPE)
endfunction()
