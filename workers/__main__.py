"""``python -m workers --settings JSON``: run one worker process (started by the supervisor)."""

from __future__ import annotations

import argparse
import logging
import sys

import msgspec
import trio

from workers.config import WorkerSettings, decode_settings
from workers.process import exit_with_parent, set_title
from workers.server import run_worker


def _parse(argv: list[str] | None) -> WorkerSettings:
    parser = argparse.ArgumentParser(prog="python -m workers", description="run one fastingress worker")
    parser.add_argument("--settings", required=True, help="WorkerSettings as JSON")
    args = parser.parse_args(argv)
    try:
        return decode_settings(args.settings)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        parser.exit(2, f"python -m workers: invalid --settings: {exc}\n")


def main(argv: list[str] | None = None) -> int:
    settings = _parse(argv)
    set_title(f"fastingress: worker {settings.index}")
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    logging.basicConfig(
        level=level if isinstance(level, int) else logging.INFO,
        format=f"%(asctime)s worker[{settings.index}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # log-format-upstream lines go to stdout exactly as formatted (as ingress-nginx's access log)
    access = logging.getLogger("fastingress.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    exit_with_parent(settings.parent_pid)
    try:
        trio.run(run_worker, settings)
    except OSError as exc:
        logging.getLogger("fastingress.worker").error(  # noqa: TRY400 (one line, no traceback)
            "worker %d: cannot start: %s", settings.index, exc.strerror or exc
        )
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
