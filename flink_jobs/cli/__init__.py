"""The `profilestream` command line.

    parser.py   the argument parser: shared options, assembled from the command groups
    demo.py     setup, demo, services stop           (one machine, embedded services)
    events.py   produce, erase                       (events in Kafka)
    job.py      run, cluster, submit, savepoint      (the Flink job, local or on a cluster)
    model.py    train, evaluate, model publish|list  (the purchase-propensity model)
    segments.py segments train                       (learned shopper segments, K-means)
    data.py     db migrate|rotate-pseudonyms, verify (what is in PostgreSQL)
    status.py   status                               (the running job's health, for operators)

The top of the house: it may import every other package (flink_jobs.config, .io, .ops, .job,
udfs, models); nothing imports it. Heavy imports (pyflink, LightGBM) stay inside the commands
that need them, so `profilestream --help` and the quick commands start fast. Every failure an
operator can fix is a `udfs.errors.ProfileStreamError`, printed as one line (exit status 2).
"""

from __future__ import annotations

import logging
import sys

from flink_jobs.cli.parser import build_parser
from flink_jobs.ops.services import TERMINATED, Terminated, exit_on_sigterm, raised_by_sigterm
from udfs.errors import ProfileStreamError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for name in ("flink_jobs", "udfs", "models"):  # dependencies may raise the root level later
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)
    # `kill` unwinds a command as Ctrl-C does: the demo's local broker stopped, not left running.
    exit_on_sigterm()
    try:
        return int(args.handler(args))
    except (ProfileStreamError, FileNotFoundError) as exc:
        print(f"profilestream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (Terminated, SystemError) as exc:  # SIGTERM, maybe wrapped by a C extension's call
        if not raised_by_sigterm(exc):
            raise
        print("terminated", file=sys.stderr)
        return TERMINATED


if __name__ == "__main__":
    sys.exit(main())
