"""The ``pooled-sessions`` command: migrate, inspect and clean up stores; run the demo.

`build_parser` holds the help text every ``--help`` prints: plain text, no markup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

from pooled_sessions import __version__
from pooled_sessions.adapters.protocol import CompactStore
from pooled_sessions.config import Settings
from pooled_sessions.errors import (
    ConfigError,
    CorruptStoreError,
    MissingDependencyError,
    StoreError,
)
from pooled_sessions.redaction import redact
from pooled_sessions.tools.inspect import Inventory, survey
from pooled_sessions.tools.migrate import DEFAULT_BATCH_SIZE, MigrationReport, migrate
from pooled_sessions.tools.progress import for_stream
from pooled_sessions.tools.stores import (
    FILE_SCHEMES,
    Source,
    open_source,
    open_target,
    parse,
    require_file,
    same_location,
    size_hint,
)

EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_CORRUPT = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
DESCRIPTION = """\
Migrate, inspect and clean up session stores; run a demo.

Run "pooled-sessions COMMAND --help" for the options of a command."""
EPILOG = """\
store URLs:
  sessions.json, file:///abs/path.json   the JSON file store (a plain path is one)
  aiofile:///abs/path.json               the same file, through aiofiles
  redis://host:port/db                   Redis, one server (also rediss://, unix:///path)
  redis+cluster://host:port              Redis Cluster
  memory://                              in this process only (for tests)
settings come from POOLED_SESSIONS_* variables and the Redis URL (?prefix=app).

exit codes:
  0    done
  1    migrate --verify found differences
  2    bad usage, URL or setting, or a missing optional dependency
  3    a store cannot be reached, read or written
  4    a store's data is corrupt (it is left as it is)
  130  interrupted (run the same command again to finish)"""
URL_HELP = "store URL (see pooled-sessions --help)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit code."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from pooled_sessions.tools import demo

        return demo.run(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    command: Callable[[argparse.Namespace], int] = args.run
    return _guarded(command, args)


def build_parser() -> argparse.ArgumentParser:
    """The command's parser, with one sub-parser per command (demo parses its own)."""
    parser = argparse.ArgumentParser(
        prog="pooled-sessions",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of:"
    )
    commands.add_parser(
        "demo", help="a short simulated web workload on a JSON file store", add_help=False
    )
    _add_migrate(commands)
    look = commands.add_parser(
        "inspect", help="count sessions, users, ages and bytes", description=_inspect.__doc__
    )
    look.add_argument("url", metavar="URL", help=URL_HELP)
    look.add_argument("--json", action="store_true", help="print one JSON object")
    look.add_argument("--quiet", action="store_true", help="no progress output (on stderr)")
    look.set_defaults(run=_inspect)
    sweep = commands.add_parser(
        "cleanup",
        help="remove expired sessions and stale index entries",
        description=_cleanup.__doc__,
    )
    sweep.add_argument("url", metavar="URL", help=URL_HELP)
    sweep.add_argument("--dry-run", action="store_true", help="count what would be removed")
    sweep.add_argument("--quiet", action="store_true", help="no progress output (on stderr)")
    sweep.set_defaults(run=_cleanup)
    return parser


def _add_migrate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    move = commands.add_parser(
        "migrate", help="copy live sessions from one store to another", description=_migrate.__doc__
    )
    move.add_argument("source", metavar="SRC_URL", help="store to read (never modified)")
    move.add_argument("target", metavar="DST_URL", help="store to write")
    move.add_argument(
        "--dry-run",
        action="store_true",
        help="check the source and count what would be copied; write nothing",
    )
    move.add_argument(
        "--verify",
        action="store_true",
        help="afterwards compare counts and a content checksum on both sides",
    )
    move.add_argument(
        "--batch-size",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"sessions per store write (default {DEFAULT_BATCH_SIZE:,})",
    )
    move.add_argument("--quiet", action="store_true", help="no progress output")
    move.set_defaults(run=_migrate)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _guarded(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command, turning the library's errors into a message and an exit code."""
    try:
        return command(args)
    except CorruptStoreError as exc:
        return _fail(EXIT_CORRUPT, str(exc))
    except (ConfigError, MissingDependencyError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except StoreError as exc:
        return _fail(EXIT_UNAVAILABLE, str(exc))
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted; run the same command again to finish")


def _fail(code: int, message: str) -> int:
    print(f"pooled-sessions: error: {message}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _side(label: str) -> Iterator[None]:
    """Say which store an error came from."""
    try:
        yield
    except StoreError as exc:
        raise type(exc)(f"{label}: {exc}") from exc


def _migrate(args: argparse.Namespace) -> int:
    """Copy every live session from SRC_URL to DST_URL, keeping ids, users, data and
    lifetimes. The source is only read. Running it again converges; sessions the
    destination has ended are not brought back."""
    settings = Settings.load()
    source_url, target_url = parse(args.source), parse(args.target)
    if same_location(source_url, target_url):
        raise ConfigError(f"source and destination are the same store: {source_url}")
    with _side("source"):
        source = open_source(source_url, settings)
    try:
        with _side("destination"):
            target = open_target(target_url, settings)
            before = target.count()
        try:
            progress = for_stream(sys.stdout, quiet=args.quiet)
            report = migrate(
                source,
                target,
                batch_size=args.batch_size,
                dry_run=args.dry_run,
                check=args.verify,
                progress=progress,
            )
        finally:
            target.close()
    finally:
        source.close()
    _print_migration(report, before)
    if report.verification is not None and not report.verification.ok:
        return EXIT_DIFFERENT
    return EXIT_OK


def _print_migration(report: MigrationReport, before: int) -> None:
    found = report.found
    ended = f", {found.tombstones:,} ended" if found.tombstones else ""
    print(
        f"source:      {report.source}: {found.live:,} live sessions, "
        f"{found.expired:,} expired (skipped){ended}"
    )
    print(f"destination: {report.target}: {before:,} sessions before")
    if report.dry_run:
        print(f"dry run:     would copy {found.live:,} sessions; nothing was written")
    else:
        print(
            f"copied:      {report.copied:,} sessions in {report.seconds:.2f} s "
            f"({report.rate:,.0f} sessions/s, {report.batches:,} writes)"
        )
        if report.refused:
            print(f"refused:     {report.refused:,} (ended in the destination; not brought back)")
        if report.ended:
            print(
                f"ended:       {report.ended:,} (ended in the source; ended in the destination too)"
            )
    check = report.verification
    if check is None:
        return
    verdict = "OK" if check.ok else "DIFFERENT"
    print(
        f"verify:      {verdict}: source {check.source_count:,} sessions, checksum "
        f"{check.source_checksum}"
    )
    print(
        f"             destination {check.target_count:,} copies, checksum "
        f"{check.target_checksum} ({check.target_total:,} sessions in all)"
    )
    if not check.ok:
        print(
            f"             {check.missing:,} missing, {check.different:,} different: "
            + ", ".join(check.examples)
        )


def _inspect(args: argparse.Namespace) -> int:
    """Count the sessions in URL: live and expired, users, the oldest and newest, and
    their size. Only reads."""
    source = open_source(parse(args.url), Settings.load())
    try:
        found = _surveyed(source, "inspecting", args.quiet, detail=True)
    finally:
        source.close()
    if args.json:
        print(json.dumps(found.as_dict(), indent=2))
    else:
        _print_inventory(found)
    return EXIT_OK


def _surveyed(source: Source, label: str, quiet: bool, *, detail: bool = False) -> Inventory:
    """One pass over ``source``, its progress on stderr: stdout carries the result."""
    progress = for_stream(sys.stderr, quiet=quiet)
    progress.start(label, size_hint(source))
    try:
        return survey(source, time.time(), detail=detail, tick=progress.advance)
    finally:
        progress.finish()


def _print_inventory(found: Inventory) -> None:
    print(f"store:      {found.url}")
    print(f"sessions:   {found.live:,} live, {found.expired:,} expired (not yet purged)")
    print(f"users:      {found.users or 0:,}")
    print(f"anonymous:  {found.anonymous or 0:,}")
    print(f"oldest:     {_when(found.oldest)}")
    print(f"newest:     {_when(found.newest)}")
    print(f"bytes:      {found.bytes or 0:,} (live records as JSON)")
    if found.file_bytes is not None:
        print(f"file:       {found.file_bytes:,} bytes, {found.tombstones:,} tombstones")


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cleanup(args: argparse.Namespace) -> int:
    """Remove expired sessions from URL, with their index entries and old tombstones; a
    sessions file's journal is folded into a new snapshot."""
    settings = Settings.load()
    url = parse(args.url)
    if args.dry_run:
        source = open_source(url, settings)
        try:
            found = _surveyed(source, "counting", args.quiet)
        finally:
            source.close()
        print(
            f"{found.url}: would remove {found.expired:,} expired sessions "
            f"({found.live:,} live stay)"
        )
        return EXIT_OK
    if url.scheme in FILE_SCHEMES:
        require_file(url.path)
    store = open_target(url, settings)
    try:
        removed = store.purge_expired(time.time())
        left = store.count()
        compacted = isinstance(store, CompactStore) and store.compact()
    finally:
        store.close()
    print(f"{redact(store.url)}: removed {removed:,} expired sessions; {left:,} remain")
    if compacted:
        print(f"{redact(store.url)}: journal folded into a new snapshot")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
