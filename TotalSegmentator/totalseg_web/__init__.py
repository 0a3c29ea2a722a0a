"""TotalSegmentator in the browser: a self-hosted trame-slicer app over the engine and the Slicer panel's job.

- ``launcher``: the one HTTP entry point (``totalseg_web``): host-name and token checks, one session process per
  browser session (tied to it: it dies with the launcher), and a proxy to it; removes a session's files when it
  ends.
- ``session_app``: one browser session: its own MRML scene, views, panel and runs (trame-slicer).
- ``protocol``: what the launcher and a session agree on (port announcement, secret header, the settings a
  session reads from its standard input).
- ``capacity``: caps (sessions) counted so that parallel requests cannot pass them.
- ``run_queue``: runs from every session take turns, so one GPU is never oversubscribed (nor shared with the
  orphaned engine of a killed session).
- ``inputs``: what a session may open: uploads (size-limited, staged apart from the open input, zips unpacked
  safely, damaged DICOM refused at once) and files under ``--data-root`` (nothing outside it).
- ``messages``: what users read names files as they named them, never by a server path.
- ``web_job``: the panel's ``SegmentationJob``, run on the original file and keeping its outputs for download.

``session_app`` and ``session_ui`` need trame-slicer, ``launcher`` aiohttp (both from the ``web`` extra); the rest
is plain Python, so the Slicer-side test environment checks it too.
"""
