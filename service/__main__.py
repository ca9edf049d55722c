"""`python -m service`: serve the API on ASEN_HOST:ASEN_PORT."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn

from .settings import get_settings


def main(argv: Sequence[str] | None = None) -> None:
    """Run uvicorn with the settings from the environment."""
    argparse.ArgumentParser(
        prog="python -m service", description="Serve the search API and the web page on "
        "ASEN_HOST:ASEN_PORT. Every setting is an ASEN_* environment variable (README, "
        "Configuration).").parse_args(argv)
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run("service.app:app", host=settings.host, port=settings.port,
                log_level=settings.log_level, proxy_headers=False, server_header=False)


if __name__ == "__main__":
    main()
