# Stand-in for the SlicerConfig.cmake of a Slicer 5.10 build, found with -DSlicer_DIR=<this folder>.
#
# Testing/test_extension_build.py configures and builds this extension's real CMakeLists.txt against it, so that a
# mistake in the extension's CMake files (a data file among the SCRIPTS, a misplaced RESOURCE, a nonexistent file)
# fails here as it would in Slicer's extension build, without a Slicer build tree. It defines only what the
# extension uses; the values are those of Slicer v5.10.0 on Linux:
#   CMake/SlicerDirectories.cmake:67,75,140,144,150  (lib dir, install root, qt-scripted-modules dirs)
#   CMake/SlicerConfig.cmake.in:120,150,167-177,187,190,297  (PythonQt, revision, OS, license/readme, include files)
# Nothing here is copied from Slicer; the behaviour of its macros is reproduced in UseSlicer.cmake.

set(Slicer_FOUND TRUE)
set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 10)
set(Slicer_VERSION_PATCH 0)
set(Slicer_VERSION "${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}.${Slicer_VERSION_PATCH}")
set(Slicer_MAIN_PROJECT_APPLICATION_NAME Slicer)
set(Slicer_REVISION "stand-in")
set(Slicer_OS linux)
set(Slicer_ARCHITECTURE amd64)
set(Slicer_USE_PYTHONQT TRUE)

# Relative directories of the build tree and, below the install prefix, of the package.
set(Slicer_LIB_DIR "lib/${Slicer_MAIN_PROJECT_APPLICATION_NAME}-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")
set(Slicer_SHARE_DIR "share/${Slicer_MAIN_PROJECT_APPLICATION_NAME}-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")
set(Slicer_QTSCRIPTEDMODULES_SUBDIR "qt-scripted-modules")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_LIB_DIR}/${Slicer_QTSCRIPTEDMODULES_SUBDIR}")
set(Slicer_INSTALL_ROOT "./")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_INSTALL_ROOT}${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")

# What an extension falls back to when it names no licence or readme of its own (Slicer's own files).
set(Slicer_LICENSE_FILE "${CMAKE_CURRENT_LIST_DIR}/SlicerLicense-stand-in.txt")
set(Slicer_README_FILE "${CMAKE_CURRENT_LIST_DIR}/SlicerReadme-stand-in.txt")

# Slicer's Python, which byte-compiles the scripts (the test passes the interpreter it runs under).
if(NOT PYTHON_EXECUTABLE)
  message(FATAL_ERROR "Slicer stand-in: pass -DPYTHON_EXECUTABLE=<python> (Slicer provides its own Python)")
endif()

set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")
