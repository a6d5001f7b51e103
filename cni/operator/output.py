"""Tables for people, JSON for scripts."""

import json
import sys
import time


class UsageError(Exception):
    """Bad usage or input: the command says so and exits 2."""


def when(epoch):
    """A lease time as UTC ISO 8601, or None."""
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def short(container, full):
    """Container IDs cut to 12 characters in tables, as crictl and docker do (prefixes work there)."""
    if container is None:
        return "-"
    return container if full or len(container) <= 12 else container[:12]


def table(columns, rows):
    """Aligned text: `columns` are (heading, key) pairs, rows dicts; numbers right-aligned."""
    cells = [[heading for heading, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(key) is None else printable(str(row[key])) for _, key in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [all(isinstance(row.get(key), int) for row in rows) and rows for _, key in columns]
    lines = []
    for line in cells:
        parts = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(line, widths, numeric)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def printable(text):
    """No escape sequence from a lease file reaches the terminal."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def dump(data):
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def emit(args, data, columns, rows, empty):
    """`data` as JSON with -o json, else `rows` as a table, or the line `empty` when there are none."""
    if args.output == "json":
        sys.stdout.write(dump(data))
    elif rows:
        sys.stdout.write(table(columns, rows))
    else:
        sys.stdout.write(empty + "\n")


def error(args, problems):
    """What stdout carries when a store could not be read: with -o json an error object (never a
    list a script could take for "none"); a table, nothing (the problems go to stderr)."""
    if getattr(args, "output", None) == "json":
        sys.stdout.write(dump({"error": "a store could not be read: " + "; ".join(problems),
                               "problems": list(problems)}))
