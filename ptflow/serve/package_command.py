"""``ptflow-serve SOURCE --package DIR``: pick the format as the server would (the one named,
or the fastest loadable one, after its sha256 and example checks), then write the build
context and the KServe manifest (``package``). The served options given on the command
line (batching, queue, timeout, threads) go into the container's ``CMD``.
"""
from __future__ import annotations

import argparse
import sys

from ptflow.serve.source import Export
from ptflow.serve.verify import Refused

CARRIED = ("max_batch_size", "max_queue_delay_ms", "max_queue", "timeout_ms", "max_request_mb", "threads",
           "instances")
DEFAULTS = {"max_batch_size": 32, "max_queue_delay_ms": 5.0, "max_queue": 256, "timeout_ms": 30000.0,
            "max_request_mb": 16.0, "instances": 1}


def server_args(args: argparse.Namespace) -> list[str]:
    """The ptflow-serve options given here that differ from the defaults, for the CMD."""
    out = []
    for name in CARRIED:
        value = getattr(args, name)
        if value is not None and value != DEFAULTS.get(name):
            out += [f"--{name.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    out += ["--no-batching"] if args.no_batching else []
    out += ["--allow-nonfinite"] if args.allow_nonfinite else []
    out += ["--trust-native-code"] if args.trust_native_code else []
    return out


def run_package_command(args: argparse.Namespace, export: Export) -> int:
    from ptflow.serve.package import PackageError, PackageOptions, package_summary, write_package
    from ptflow.serve.startup import choose, device_of, threads_of

    served, result = choose(args, export, device_of(args, export), threads_of(args, export))
    for entry in (served.entry, export.manifest.get("example") or {}):   # downloaded from the store if need be
        export.path(str(entry.get("file")), "files/export.example" if entry is not served.entry
                    else f"files/export.{served.fmt}")
    options = PackageOptions(image=args.image, grace_s=args.grace_s, server_args=server_args(args))
    try:
        paths = write_package(args.package, export.folder, export.manifest, served.fmt, name=args.name,
                              options=options)
    except PackageError as error:
        raise Refused(str(error)) from None
    print(package_summary(paths))
    print(f"ptflow-serve: packaged {served.fmt} (example max abs error {result.max_abs_error:.3g} within "
          f"{result.tolerance:g}) into {args.package}", file=sys.stderr)
    return 0
