"""The engine's commands: ``TotalSegmentator`` (main, options), the weights commands and
``totalseg_combine_masks``."""
