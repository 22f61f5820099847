# cmake/strataSentencePiece.cmake: finds SentencePiece behind STRATA_USE_SENTENCEPIECE.
#
# Debian's libsentencepiece-dev ships no CMake package, only pkg-config's `sentencepiece` (headers
# sentencepiece_processor.h and sentencepiece_trainer.h, libraries -lsentencepiece
# -lsentencepiece_train), so this defines the imported target strata::sentencepiece from it. The
# installed strataConfig.cmake includes this file too, so consumers find the same library.
function(strata_find_sentencepiece)
  if(TARGET strata::sentencepiece)
    return()
  endif()
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(STRATA_SENTENCEPIECE QUIET sentencepiece)
  endif()
  if(NOT STRATA_SENTENCEPIECE_FOUND)
    message(FATAL_ERROR
      "STRATA_USE_SENTENCEPIECE=ON but pkg-config finds no 'sentencepiece'. On Debian: "
      "apt-get install pkg-config libsentencepiece-dev (or configure with -DSTRATA_USE_SENTENCEPIECE=OFF).")
  endif()
  set(libraries)
  foreach(name IN LISTS STRATA_SENTENCEPIECE_LIBRARIES)
    find_library(STRATA_SENTENCEPIECE_LIB_${name} NAMES ${name}
                 HINTS ${STRATA_SENTENCEPIECE_LIBRARY_DIRS})
    if(NOT STRATA_SENTENCEPIECE_LIB_${name})
      message(FATAL_ERROR "sentencepiece.pc names the library '${name}', which was not found in "
                          "'${STRATA_SENTENCEPIECE_LIBRARY_DIRS}'")
    endif()
    list(APPEND libraries ${STRATA_SENTENCEPIECE_LIB_${name}})
  endforeach()
  add_library(strata::sentencepiece INTERFACE IMPORTED GLOBAL)
  set_target_properties(strata::sentencepiece PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${STRATA_SENTENCEPIECE_INCLUDE_DIRS}"
    INTERFACE_LINK_LIBRARIES "${libraries}")
  message(STATUS "strata: SentencePiece ${STRATA_SENTENCEPIECE_VERSION} (${libraries})")
  set(STRATA_SENTENCEPIECE_LIBRARY_DIRS "${STRATA_SENTENCEPIECE_LIBRARY_DIRS}" PARENT_SCOPE)
  set(STRATA_SENTENCEPIECE_LIBRARIES "${STRATA_SENTENCEPIECE_LIBRARIES}" PARENT_SCOPE)
endfunction()
