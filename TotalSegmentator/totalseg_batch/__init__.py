"""totalseg_batch: a cohort of images segmented on warm workers (Dask), resumable, one manifest."""
