"""``python -m aiofs.testing.drive_emulator --port N``: serve the Drive v3 emulator on loopback.

Prints the base URL and the ``DriveBackend`` options (a refresh token included), then
serves until interrupted, or for ``--exit-after`` seconds.
"""

from __future__ import annotations

import argparse
import json
import threading

from aiofs.testing.drive_emulator import DriveEmulator


def main(argv: list[str] | None = None) -> int:
    """Run the emulator in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m aiofs.testing.drive_emulator",
                                     description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "localhost", "::1"])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--quota", type=int, default=15 * 1024 ** 3, help="quota in bytes")
    parser.add_argument("--token-lifetime", type=float, default=3600.0)
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="share of requests failing (403 rate limit, 429, 500, 503, drops)")
    parser.add_argument("--exit-after", type=float, default=None, help="stop after N seconds")
    args = parser.parse_args(argv)
    with DriveEmulator(port=args.port, host=args.host, latency=args.latency,
                       quota_limit=args.quota, token_lifetime=args.token_lifetime) as emu:
        emu.faults.configure(rate=args.fault_rate)
        print(f"Drive v3 emulator at {emu.url}", flush=True)
        print(json.dumps(emu.backend_options(), indent=2), flush=True)
        try:  # the server runs in its own thread: wait for Ctrl-C or --exit-after
            threading.Event().wait(args.exit_after)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
