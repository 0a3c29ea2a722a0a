"""TotalSegmentator as a server: one GPU machine segments for Slicer workstations, scripts, the command line
(``TotalSegmentator --server``) and MONAI Label's clients.

- ``cli``: the ``totalseg_server`` command (the API alone; ``totalseg_web --api`` mounts the same API beside the
  browser app, on its token and run queue).
- ``mount``: the API as part of an aiohttp application (options, service, routes, start and stop).
- ``api``: the routes of ``/api/v1`` and who may use them (bearer token).
- ``monai``: the part of MONAI Label's REST API its clients use for segmentation (info, datastore upload, infer).
- ``service``: a job's way through the run queue to a warm slot and its results.
- ``jobs``: jobs, their folders and states; results kept for a set time, then removed.
- ``slots`` and ``slot_process``: warm engine processes, one per GPU, that keep their models between jobs.
- ``uploads``: multipart bodies streamed to disk under the size limit; ``errors``: JSON error answers.

Needs aiohttp (``pip install ".[server]"``) and the engine; never trame, Qt or MRML. Its client is
``totalseg_remote`` (standard library and requests only).
"""
