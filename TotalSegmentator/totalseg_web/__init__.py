"""TotalSegmentator in the browser: a self-hosted trame-slicer app over the engine and the Slicer panel's job.

- ``launcher``: the one HTTP entry point (``totalseg_web``): token check, one session process per browser
  session, and a proxy to it; removes a session's files when it ends.
- ``session_app``: one browser session: its own MRML scene, views, panel and runs (trame-slicer).
- ``protocol``: the two lines the launcher and a session agree on (port announcement, secret header).
- ``run_queue``: runs from every session take turns, so one GPU is never oversubscribed.
- ``inputs``: what a session may open: uploads (size-limited, zips unpacked safely) and files under
  ``--data-root`` (nothing outside it).
- ``web_job``: the panel's ``SegmentationJob``, run on the original file and keeping its outputs for download.

``session_app`` and ``session_ui`` need trame-slicer, ``launcher`` aiohttp (both from the ``web`` extra); the rest
is plain Python, so the Slicer-side test environment checks it too.
"""
