"""The pipeline in memory: crop, resample, predict, merge, postprocess, back to the input grid; its statistics and
the official mask groups."""
