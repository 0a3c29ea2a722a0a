# Stand-in for Slicer's UseSlicer.cmake: the extension defaults and the macros a scripted-module extension calls.
#
# Each macro below is written anew for the test; it reproduces what the real one does to an extension's files
# (which file lands where, which build rule depends on which file), not how it does it. Sources read:
#   Slicer v5.10.0   CMake/UseSlicer.cmake.in:60-80, 375-400, 423-433
#   Slicer v5.10.0   CMake/SlicerMacroBuildScriptedModule.cmake:21-123
#   Slicer v5.10.0   CMake/SlicerMacroPythonTesting.cmake:75-95
#   Slicer v5.10.0   CMake/SlicerMacroConfigureGenericPythonModuleTests.cmake
#   CTK 868d56c7     CMake/ctkMacroCompilePythonScript.cmake:34-116 (macro), 119-144 (copy rules),
#                    147-199 (byte-compile target); CMake/ctk_compile_python_scripts.cmake.in
# Slicer sets no CTK_COMPILE_PYTHON_SCRIPTS_GLOBAL_TARGET_NAME for extensions (only its own CMakeLists.txt:1020
# does) and leaves CTK_COMPILE_PYTHON_SCRIPT_KEEP_ONLY_PYC FALSE, so each module gets its own targets and keeps
# its .py files; that is the case reproduced here.

# UseSlicer.cmake.in:60-80: the extension is named after the project.
if(NOT DEFINED EXTENSION_NAME OR "${EXTENSION_NAME}" STREQUAL "")
  set(EXTENSION_NAME ${PROJECT_NAME})
endif()
if("${EXTENSION_NAME}" MATCHES "^$|^Slicer$|^Project$")
  message(FATAL_ERROR "Slicer stand-in: call project(<extension_name>) before include(\${Slicer_USE_FILE})")
endif()

# UseSlicer.cmake.in:375-400: defaults for what the extension did not set before including this file.
if(NOT DEFINED EXTENSION_DEPENDS)
  set(EXTENSION_DEPENDS NA)
endif()
if(NOT DEFINED EXTENSION_LICENSE_FILE)
  set(EXTENSION_LICENSE_FILE ${Slicer_LICENSE_FILE})
endif()
if(NOT DEFINED EXTENSION_README_FILE)
  set(EXTENSION_README_FILE ${Slicer_README_FILE})
endif()
if(NOT DEFINED EXTENSION_BUILD_SUBDIRECTORY)
  set(EXTENSION_BUILD_SUBDIRECTORY ".")
endif()
if(NOT DEFINED EXTENSION_ENABLED)
  set(EXTENSION_ENABLED 1)
endif()

# UseSlicer.cmake.in:423-433: extension testing is on (BUILD_TESTING defaults to ON).
include(CTest)

# ctkMacroCompilePythonScript: copy every script and resource into DESTINATION_DIR, byte-compile the scripts there,
# install DESTINATION_DIR. A SCRIPTS entry whose extension (from the first dot of the file name on) does not match
# the regular expression "py" gets ".py" appended first, so "data/tasks.json" is looked for as
# "data/tasks.json.py": its copy rule depends on a file that does not exist, and the build stops there.
function(_slicer_stand_in_compile_python_scripts target destination_dir install_dir no_install_subdir)
  cmake_parse_arguments(ARG "" "" "SCRIPTS;RESOURCES" ${ARGN})
  get_filename_component(source_dir "${CMAKE_CURRENT_SOURCE_DIR}" REALPATH)
  get_filename_component(destination_dir "${destination_dir}" REALPATH)

  set(copied_scripts)
  foreach(script IN LISTS ARG_SCRIPTS)
    if(IS_ABSOLUTE "${script}")
      message(FATAL_ERROR "Slicer stand-in: absolute SCRIPTS entries are not reproduced: ${script}")
    endif()
    get_filename_component(extension "${script}" EXT)
    if(NOT "${extension}" MATCHES "py")
      string(APPEND script ".py")
    endif()
    add_custom_command(
      OUTPUT "${destination_dir}/${script}"
      COMMAND ${CMAKE_COMMAND} -E copy "${source_dir}/${script}" "${destination_dir}/${script}"
      DEPENDS "${source_dir}/${script}"
      COMMENT "Copying python Script: ${script}")
    list(APPEND copied_scripts "${destination_dir}/${script}")
  endforeach()

  # Resources keep the relative path they are given, below the same DESTINATION_DIR as the scripts.
  set(copied_resources)
  foreach(resource IN LISTS ARG_RESOURCES)
    if(IS_ABSOLUTE "${resource}")
      message(FATAL_ERROR "Slicer stand-in: absolute RESOURCES entries are not reproduced: ${resource}")
    endif()
    add_custom_command(
      OUTPUT "${destination_dir}/${resource}"
      COMMAND ${CMAKE_COMMAND} -E copy "${source_dir}/${resource}" "${destination_dir}/${resource}"
      DEPENDS "${source_dir}/${resource}"
      COMMENT "Copying python Resource: ${resource}")
    list(APPEND copied_resources "${destination_dir}/${resource}")
  endforeach()

  if(copied_scripts)
    add_custom_target(Copy${target}PythonScriptFiles ALL DEPENDS ${copied_scripts})
  endif()
  if(copied_resources)
    add_custom_target(Copy${target}PythonResourceFiles ALL DEPENDS ${copied_resources})
  endif()

  # Byte-compile the copied scripts with Slicer's Python, each to <script>c beside it; like CTK's generated
  # script, a file that does not compile is reported and does not fail the build.
  set(file_list "${CMAKE_CURRENT_BINARY_DIR}/compile_${target}_python_scripts.txt")
  string(REPLACE ";" "\n" file_lines "${copied_scripts}")
  file(WRITE "${file_list}" "${file_lines}\n")
  set(stamp "${CMAKE_CURRENT_BINARY_DIR}/python_compile_${target}_complete")
  add_custom_command(
    OUTPUT "${stamp}"
    COMMAND "${PYTHON_EXECUTABLE}" "${Slicer_DIR}/compile_python_scripts.py" "${file_list}" "${stamp}"
    DEPENDS Copy${target}PythonScriptFiles "${file_list}"
    COMMENT "Compiling python scripts: ${target}")
  add_custom_target(Compile${target}PythonFiles ALL DEPENDS "${stamp}")

  # The whole folder is installed; with NO_INSTALL_SUBDIR its content goes straight into install_dir.
  set(directory_to_install "${destination_dir}")
  if(no_install_subdir)
    string(APPEND directory_to_install "/")
  endif()
  install(DIRECTORY "${directory_to_install}" DESTINATION "${install_dir}" COMPONENT RuntimeLibraries
    USE_SOURCE_PERMISSIONS)
endfunction()

# SlicerMacroBuildScriptedModule.cmake:21-123.
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  message(STATUS "Configuring Scripted module: ${MY_SLICER_NAME}")
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  if(NOT DEFINED MY_SLICER_NAME)
    message(FATAL_ERROR "NAME is mandatory")
  endif()

  # Configure-time check: each entry must exist as given or with ".py" appended (or be a generated file).
  foreach(kind SCRIPTS RESOURCES)
    foreach(entry IN LISTS MY_SLICER_${kind})
      set(path "${entry}")
      if(NOT IS_ABSOLUTE "${path}")
        set(path "${CMAKE_CURRENT_SOURCE_DIR}/${entry}")
      endif()
      if(NOT EXISTS "${path}" AND NOT EXISTS "${path}.py")
        if(NOT IS_ABSOLUTE "${entry}")
          set(path "${CMAKE_CURRENT_BINARY_DIR}/${entry}")
        endif()
        get_source_file_property(is_generated "${path}" GENERATED)
        if(NOT is_generated)
          message(FATAL_ERROR "slicerMacroBuildScriptedModule(${kind}) given nonexistent file or directory '${entry}'")
        endif()
      endif()
    endforeach()
  endforeach()

  if(NOT Slicer_USE_PYTHONQT)
    message(FATAL_ERROR "Attempting to build the Python scripted module '${MY_SLICER_NAME}' when Slicer_USE_PYTHONQT is OFF")
  endif()

  # Without WITH_SUBDIR (the usual case) every scripted module of the extension shares
  # <build>/lib/Slicer-X.Y/qt-scripted-modules, and so does its Resources/ folder.
  set(subdir "")
  set(no_install_subdir TRUE)
  if(MY_SLICER_WITH_SUBDIR)
    get_filename_component(subdir "${CMAKE_CURRENT_SOURCE_DIR}" NAME)
    set(subdir "/${subdir}")
    set(no_install_subdir FALSE)
  endif()
  _slicer_stand_in_compile_python_scripts(${MY_SLICER_NAME}
    "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}${subdir}" "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    ${no_install_subdir}
    SCRIPTS ${MY_SLICER_SCRIPTS}
    RESOURCES ${MY_SLICER_RESOURCES})

  if(BUILD_TESTING AND MY_SLICER_WITH_GENERIC_TESTS)
    # SlicerMacroConfigureGenericPythonModuleTests configures qSlicer<Name>ModuleGenericTest.py from a template.
    set(generic_test "qSlicer${MY_SLICER_NAME}ModuleGenericTest.py")
    file(WRITE "${CMAKE_CURRENT_BINARY_DIR}/${generic_test}" "# Slicer stand-in: Slicer's generic module test\n")
    slicer_add_python_unittest(SCRIPT ${generic_test}
      SLICER_ARGS --no-main-window --disable-cli-modules
                  --additional-module-path ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
      TESTNAME_PREFIX nomainwindow_)
  endif()
endfunction()

# SlicerMacroPythonTesting.cmake:75-95: a ctest "py_<prefix><script name>" that runs the script's unittest in
# Slicer. No Slicer runs here, so the stand-in registers the test disabled: ctest lists it as not run.
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS" ${ARGN})
  get_filename_component(test_name "${MY_SCRIPT}" NAME_WE)
  add_test(NAME py_${MY_TESTNAME_PREFIX}${test_name}
    COMMAND ${CMAKE_COMMAND} -E echo "Slicer would run the unittest ${test_name} here")
  set_tests_properties(py_${MY_TESTNAME_PREFIX}${test_name} PROPERTIES DISABLED TRUE)
endfunction()
