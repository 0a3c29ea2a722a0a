# Stand-in for Slicer's CMake/SlicerExtensionCPack.cmake (v5.10.0): the checks it makes on the extension, the
# extension description it writes and the package settings that name the extension's readme and licence.
# Reproduces (written anew, not copied):
#   CMake/SlicerExtensionCPack.cmake:32-54     sanity checks (README and LICENSE files must exist)
#   CMake/SlicerExtensionCPack.cmake:73-117    <build>/<Extension>.s4ext from the EXTENSION_* variables
#   CMake/SlicerExtensionCPack.cmake:129-160   CPACK_* settings, TGZ package
#   Extensions/CMake/SlicerFunctionGenerateExtensionDescription.cmake:89-99 and
#   Utilities/Templates/Extensions/extension_description.s4ext.in  ("keyword value" lines; lists space separated)
# The source-control fields (scm, scmurl, scmrevision) come from the working copy and are left out.

foreach(var EXTENSION_NAME Slicer_REVISION Slicer_OS Slicer_ARCHITECTURE)
  if("${${var}}" STREQUAL "")
    message(FATAL_ERROR "error: ${var} is either NOT defined or empty.")
  endif()
endforeach()
if(NOT "${EXTENSION_NAME}" STREQUAL "${PROJECT_NAME}")
  message(STATUS "Skipping extension packaging: ${PROJECT_NAME} - EXTENSION_NAME [${EXTENSION_NAME}] different from PROJECT_NAME [${PROJECT_NAME}]")
  return()
endif()
foreach(var EXTENSION_README_FILE EXTENSION_LICENSE_FILE)
  if(NOT EXISTS "${${var}}")
    message(FATAL_ERROR "error: ${var} points to an inexistent file: ${${var}}")
  endif()
endforeach()

# Lists become space separated (contributors: comma separated), newlines of the description become <br>.
string(REPLACE ";" ", " _contributors "${EXTENSION_CONTRIBUTORS}")
string(REPLACE "\n" "<br>" _description "${EXTENSION_DESCRIPTION}")
string(REPLACE "\n" " " _screenshots "${EXTENSION_SCREENSHOTURLS}")
string(REPLACE ";" " " _screenshots "${_screenshots}")
string(REGEX REPLACE " +" " " _screenshots "${_screenshots}")
string(STRIP "${_screenshots}" _screenshots)
string(REPLACE ";" " " _depends "${EXTENSION_DEPENDS}")
file(WRITE "${CMAKE_BINARY_DIR}/${EXTENSION_NAME}.s4ext"
  "# Written by the Slicer stand-in of Testing/test_extension_build.py\n"
  "depends ${_depends}\n"
  "build_subdirectory ${EXTENSION_BUILD_SUBDIRECTORY}\n"
  "homepage ${EXTENSION_HOMEPAGE}\n"
  "contributors ${_contributors}\n"
  "category ${EXTENSION_CATEGORY}\n"
  "iconurl ${EXTENSION_ICONURL}\n"
  "status ${EXTENSION_STATUS}\n"
  "description ${_description}\n"
  "screenshoturls ${_screenshots}\n"
  "enabled ${EXTENSION_ENABLED}\n")
message(STATUS "Extension description has been written to: ${CMAKE_BINARY_DIR}/${EXTENSION_NAME}.s4ext")

set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${EXTENSION_DESCRIPTION}")
set(CPACK_MONOLITHIC_INSTALL ON)
set(CPACK_PACKAGE_DESCRIPTION_FILE "${EXTENSION_README_FILE}")
set(CPACK_RESOURCE_FILE_LICENSE "${EXTENSION_LICENSE_FILE}")
set(CPACK_PACKAGE_FILE_NAME "${Slicer_REVISION}-${Slicer_OS}-${Slicer_ARCHITECTURE}-${EXTENSION_NAME}")
set(CPACK_GENERATOR "TGZ")
include(CPack)
