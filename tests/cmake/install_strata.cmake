# Install the strata build tree BUILD_DIR into a fresh PREFIX (the setup fixture of the
# find_package consumer test): cmake -DBUILD_DIR=... -DPREFIX=... [-DCONFIG=...] -P install_strata.cmake
foreach(var BUILD_DIR PREFIX)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install_strata.cmake: -D${var}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE "${PREFIX}")
set(config_args)
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
message(STATUS "cmake --install ${BUILD_DIR} --prefix ${PREFIX} ${config_args}")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args}
                RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "install_strata.cmake: cmake --install failed (${result})")
endif()
foreach(file share/cmake/strata/strataConfig.cmake share/cmake/strata/strataConfigVersion.cmake
             share/cmake/strata/strataTargets.cmake share/pkgconfig/strata.pc
             include/strata/core/types.hpp)
  if(NOT EXISTS "${PREFIX}/${file}")
    message(FATAL_ERROR "install_strata.cmake: ${PREFIX}/${file} was not installed")
  endif()
endforeach()
