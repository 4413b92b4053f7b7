"""The review commands of the CLI: ``doorface visits``, ``doorface visitors`` and ``doorface serve``.

Each opens the gallery file (and its visit log) the running ``doorface run`` writes; SQLite's WAL lets them read and
change it meanwhile, and the runtime picks up a named group within ``gallery.watch_interval`` seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

EXIT_OK = 0
EXIT_SETUP_ERROR = 2

VISITS_USAGE = "visits [list | not-person VISIT_ID | crop VISIT_ID OUT.jpg]"
VISITORS_USAGE = "visitors [list | name GROUP NAME | add GROUP PERSON | crops GROUP OUT_DIR]"
_ARITY = {"visits": {"list": 0, "not-person": 1, "crop": 2},
          "visitors": {"list": 0, "name": 2, "add": 2, "crops": 2}}


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@contextmanager
def open_review(config, *, create: bool = False) -> Iterator[tuple]:
    """(gallery, visit log) of the configured gallery file, closed on exit."""
    from edge.embedder import EmbedderSpec
    from edge.manifest import Manifest
    from edge.runner import open_gallery
    from edge.visits import open_visit_log

    entry = Manifest.load(config.models_dir).entry(config.embedder.model)
    with open_gallery(config, EmbedderSpec.from_entry(entry), create=create) as gallery:
        yield gallery, open_visit_log(gallery, config, entry)


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what} must be a number (see the first column of the list), got {value!r}") from None


def cmd_visits(args, config) -> int:
    with open_review(config) as (_, log):
        if args.action == "list":
            visits = log.visits(limit=args.limit)
            if args.json:
                print(json.dumps({"visits": [v.to_dict() for v in visits]}))
                return EXIT_OK
            for v in visits:
                who = v.person or (f"unknown, group {v.group}" if v.group is not None else "unknown")
                note = f" (corrected: not {v.not_person})" if v.not_person else ""
                print(f"{v.id:>6}  {_when(v.timestamp)}  {v.camera}  {who}{note}  confidence {v.confidence:.2f}")
            if not visits:
                print("no visits recorded yet (visits.enabled, and `doorface run` records each event)", file=sys.stderr)
        elif args.action == "not-person":
            before = log.visit(_int(args.args[0], "VISIT_ID"))
            visit = log.not_person(before.id)
            print(f"visit {visit.id} is not {before.person!r}: {before.person!r} will not be named for that face "
                  f"again; it is now in unknown group {visit.group}", file=sys.stderr)
        else:
            target = Path(args.args[1])
            target.write_bytes(log.crop(_int(args.args[0], "VISIT_ID")))
            print(target)
    return EXIT_OK


def cmd_visitors(args, config) -> int:
    with open_review(config) as (_, log):
        if args.action == "list":
            groups = log.groups()
            if args.json:
                print(json.dumps({"groups": [g.to_dict() for g in groups]}))
                return EXIT_OK
            print(f"{len(groups)} unknown visitor group(s)")
            for g in groups:
                print(f"  group {g.id}: {g.visits} visit(s), first {_when(g.first_seen)}, last {_when(g.last_seen)}")
        elif args.action in ("name", "add"):
            group = _int(args.args[0], "GROUP")
            visits = log.group(group).visits
            person = (log.name_group if args.action == "name" else log.add_group)(group, args.args[1])
            print(f"group {group} ({visits} visit(s)) is now {person.name!r}: {person.embeddings} face(s) enrolled",
                  file=sys.stderr)
        else:
            group = _int(args.args[0], "GROUP")
            log.group(group)
            target = Path(args.args[1])
            target.mkdir(parents=True, exist_ok=True)
            for visit in log.visits(group=group, limit=10_000):
                if visit.has_crop:
                    path = target / f"visit-{visit.id}.jpg"
                    path.write_bytes(log.crop(visit.id))
                    print(path)
    return EXIT_OK


def cmd_serve(args, config) -> int:
    from edge.review.server import serve

    return serve(config, host=args.host, port=args.port)


def add_parsers(sub, parents: list[argparse.ArgumentParser], run) -> None:
    """The review subcommands; ``run(func)`` wraps ``func(args, config)`` as the CLI's command function."""
    visits = sub.add_parser("visits", parents=parents, help="list recent visits; mark a wrong match as not that "
                                                            "person")
    visits.add_argument("action", nargs="?", default="list", choices=tuple(_ARITY["visits"]),
                        help="what to do (default: list)")
    visits.add_argument("args", nargs="*", metavar="ARG", help="not-person: VISIT_ID; crop: VISIT_ID OUT.jpg")
    visits.add_argument("--limit", type=int, default=50, help="how many of the latest visits to list (default 50)")
    visits.add_argument("--json", action="store_true", help="list as JSON")
    visits.set_defaults(func=run(cmd_visits), usage_line=VISITS_USAGE)

    visitors = sub.add_parser("visitors", parents=parents,
                              help="unknown visitors grouped by face; name a group, or add it to someone enrolled")
    visitors.add_argument("action", nargs="?", default="list", choices=tuple(_ARITY["visitors"]),
                          help="what to do (default: list)")
    visitors.add_argument("args", nargs="*", metavar="ARG",
                          help="name: GROUP NAME; add: GROUP PERSON; crops: GROUP OUT_DIR")
    visitors.add_argument("--json", action="store_true", help="list as JSON")
    visitors.set_defaults(func=run(cmd_visitors), usage_line=VISITORS_USAGE)

    serve = sub.add_parser("serve", parents=parents,
                           help="the review page: recent visits, unknown visitors, people (http://127.0.0.1:8080)")
    serve.add_argument("--host", help="override review.host (anything but loopback needs a token)")
    serve.add_argument("--port", type=int, help="override review.port")
    serve.set_defaults(func=run(cmd_serve))


def usage_error(args) -> str:
    """The usage line when a review command got the wrong number of arguments, else ''."""
    arity = _ARITY.get(args.command)
    if arity is None or len(args.args) == arity[args.action]:
        return ""
    return f"usage: {args.usage_line}"
