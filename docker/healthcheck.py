"""Container health check: exit 0 when GET http://127.0.0.1:$ASEN_PORT<path> answers 200.

    python /opt/asen/healthcheck.py [/readyz]

Standard library only (the slim image has no curl). /readyz is 200 once a model and an
index are loaded; /healthz only says the process answers.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def url(path: str) -> str:
    host = os.environ.get("ASEN_HOST", "127.0.0.1").strip()
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    port = os.environ.get("ASEN_PORT", "8000").strip() or "8000"
    return f"http://{host}:{port}{path}"


def main(argv: list[str]) -> int:
    target = url(argv[0] if argv else "/readyz")
    try:
        with urllib.request.urlopen(target, timeout=4) as resp:
            ok = resp.status == 200
            print(f"{target}: {resp.status}")
    except urllib.error.HTTPError as exc:
        print(f"{target}: {exc.code} {exc.read()[:200].decode(errors='replace')}")
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{target}: {exc}")
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
