# Stand-in for Slicer's CMake/SlicerExtensionGenerateConfig.cmake: it writes <Extension>Config.cmake for extensions
# that depend on this one, which no test reads, so the stand-in does nothing.
