# cmake/strataBlas.cmake: finds the BLAS library behind STRATA_USE_BLAS.
#
# Sets BLAS::BLAS (FindBLAS), STRATA_BLA_VENDOR (the vendor that was found, for the installed
# package to look for the same one) and STRATA_BLAS_DEFINITIONS (STRATA_HAVE_OPENBLAS when the
# library has OpenBLAS's thread and configuration functions, which strata::set_num_threads and
# strata::product_backend then use).
include(CheckFunctionExists)

function(strata_find_blas)
  if(DEFINED BLA_VENDOR)
    find_package(BLAS)
  else()
    # OpenBLAS first (Debian: libopenblas-openmp-dev), then whatever BLAS is installed.
    set(BLA_VENDOR OpenBLAS)
    find_package(BLAS)
    if(NOT BLAS_FOUND)
      unset(BLA_VENDOR)
      find_package(BLAS)
    endif()
  endif()
  if(NOT BLAS_FOUND)
    message(FATAL_ERROR
      "STRATA_USE_BLAS=ON but no BLAS library was found. On Debian: "
      "apt-get install libopenblas-openmp-dev (or configure with -DSTRATA_USE_BLAS=OFF).")
  endif()
  set(CMAKE_REQUIRED_LIBRARIES ${BLAS_LIBRARIES})
  check_function_exists(openblas_set_num_threads STRATA_BLAS_IS_OPENBLAS)
  unset(CMAKE_REQUIRED_LIBRARIES)
  set(defs "")
  if(STRATA_BLAS_IS_OPENBLAS)
    list(APPEND defs STRATA_HAVE_OPENBLAS)
  endif()
  message(STATUS "strata: matrix products through BLAS (${BLAS_LIBRARIES})")
  set(STRATA_BLAS_DEFINITIONS ${defs} PARENT_SCOPE)
  set(STRATA_BLA_VENDOR "${BLA_VENDOR}" PARENT_SCOPE)
  # FindBLAS's results live in this function's scope; hand the ones strata uses to the caller.
  set(BLAS_LIBRARIES ${BLAS_LIBRARIES} PARENT_SCOPE)
  set(BLAS_FOUND ${BLAS_FOUND} PARENT_SCOPE)
endfunction()
