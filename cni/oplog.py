"""The operation log: `logFile` and `logLevel` in the network config.

One JSON object per line, appended after the answer is on stdout, with a
fixed set of fields: never the config or the environment as a whole (a
config may carry credentials of other plugins in a chain). Strings are
clipped and JSON-escaped, so hostile values can neither forge lines nor
grow the file without bound. Nothing here is imported or run unless
logFile is set, and no failure here changes the operation's answer.
"""

import json
import os
import sys

from cni.contract import MAX_WARNINGS, decode_config
from cni.errors import CniError

LOG_LEVELS = ("error", "info", "debug")
LOG_MAGIC = b'{"time": '   # every line starts so: we append only to files that look like ours
LOG_CLIP = 500


def peek_config(stdin):
    """The decoded config for the log when read_request failed before decoding it; else None."""
    try:
        return decode_config(stdin)
    except CniError:
        return None


def clip(value):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= LOG_CLIP else text[:LOG_CLIP] + f"...({len(text)} chars)"


def log_operation(config, plugin, env, request, result, error, stdout, stderr):
    """Append this invocation's line to config's logFile; `plugin` is the executable's name."""
    path, level = config.get("logFile"), config.get("logLevel", "info")
    level = LOG_LEVELS.index(level) if level in LOG_LEVELS else 1
    if error is None and level < 1:
        return
    try:
        import time
        now = time.time()
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "plugin": plugin,
            "pid": os.getpid(),
            "command": clip(env.get("CNI_COMMAND", "")),
            "network": clip(config.get("name", "")),
            "containerID": clip(env.get("CNI_CONTAINERID", "")),
            "ifname": clip(env.get("CNI_IFNAME", "")),
        }
        args = request.args if request is not None else {}
        if args.get("K8S_POD_NAME"):
            entry["pod"] = clip(f"{args.get('K8S_POD_NAMESPACE', '')}/{args['K8S_POD_NAME']}")
        if level >= 2:
            entry["netns"] = clip(env.get("CNI_NETNS", ""))
            entry["cniVersion"] = clip(config.get("cniVersion", ""))
            handoff = sys.modules.get("cni.handoff")
            if handoff is not None and handoff.status:
                entry["agent"] = clip(handoff.status)   # served by underlayd, or why not
        if request is not None and request.warnings:
            entry["warnings"] = [clip(w) for w in request.warnings[:MAX_WARNINGS]]
        if error is None:
            entry["result"] = "ok"
            if isinstance(result, dict):
                entry["ips"] = [clip(ip.get("address")) for ip in result.get("ips") or []]
        else:
            entry.update(result="error", code=error.code, msg=clip(error.msg))
            if level >= 2 and error.details:
                entry["details"] = clip(error.details)
        line = json.dumps(entry) + "\n"
        append_log(path, line.encode(), stdout)
    except Exception as e:
        try:
            stderr.write(f"underlay: logFile {clip(path)!r}: {clip(getattr(e, 'strerror', None) or str(e))}; "
                         "not logged\n")
        except Exception:
            pass


def append_log(path, data, stdout):
    """Append to `path`: a regular file, not a symlink, not stdout, and new, empty or ours."""
    import errno
    import stat
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("must be an absolute path")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY |
                 os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        try:
            out = os.fstat(stdout.fileno())
            same = (out.st_dev, out.st_ino) == (st.st_dev, st.st_ino)
        except (AttributeError, ValueError, OSError):
            same = False  # no file behind stdout (an in-process caller's buffer)
        if same:
            raise OSError(errno.EINVAL, "is the plugin's stdout, which carries the result")
        if st.st_size and os.pread(fd, len(LOG_MAGIC), 0) != LOG_MAGIC:
            raise OSError(errno.EINVAL, "exists and is not an underlay log; refusing to append to it")
        os.write(fd, data)
    finally:
        os.close(fd)
