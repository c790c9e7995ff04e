"""The ``xenevtchn`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xenevtchn", description="Xen event channels, simulated.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="a short tour: dom0 and two guests raise and handle events",
                   description="Run a short deterministic tour of event channels and print it.")
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        from .demo import run

        run(sys.stdout)
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
