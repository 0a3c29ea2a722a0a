"""What the launcher and a session process agree on (kept apart so the launcher need not import trame-slicer)."""

PORT_LINE = "TOTALSEG_WEB_SESSION_PORT="  # a session prints this and its port once it listens
PROXY_HEADER = "X-TotalSeg-Proxy"  # the launcher's secret, required on every request a session answers
SESSION_MODULE = "totalseg_web.session_app"
