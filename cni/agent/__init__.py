"""underlayd: the node agent that keeps the plugins warm.

    underlayd [--socket PATH] [--metrics HOST:PORT] [--textfile PATH] [--workers N] [--spares N] [--queue N]
              [--data-dir DIR]... [--heal-every SECONDS] [--config-dir DIR] [--cluster-data-dir DIR]...
              [--dhcp-dir DIR]

Every exec of a plugin pays for a fresh interpreter and its imports (~30 ms
before any work). underlayd imports every plugin once and keeps forked spare
workers waiting on its socket (default /run/underlay/underlay.sock, mode 0600
in a 0700 directory); a plugin executable hands its invocation over
(cni/handoff.py, the protocol) and exits with the worker's exit code.

A worker serves exactly one invocation and exits, so each one is as isolated
as an exec: its own process, with the caller's argv, environment, stdout,
stderr, network namespace, working directory and umask; it runs the plugin's
own main(). Nothing is cached between invocations: the stores and the kernel
stay the truth, so restarting the agent loses nothing, and a plugin finding
no agent does the same work itself.

Only root peers are served (SO_PEERCRED; a refused caller runs the plugin
itself, with its own privileges), and the clients hand off only to a root
listener; the socket's directory, and those above it, must be writable by
root alone (bind()). At most --workers invocations run at once
(default 8); more wait in the socket's listen queue (--queue, default 256).
The agent touches its socket file every 0.25 s: a caller waits while it beats
(up to 60 s in the queue) and gives up, code 11 with nothing done, once it has
been silent for UNDERLAY_AGENT_TIMEOUT (5 s). --spares (default 2) workers are forked
ahead of requests.

The agent runs in the node's network namespace; a worker enters its caller's
network and mount namespaces (the node's, unless a runtime runs plugins
elsewhere, or the agent runs in a container) and opens pod netns paths
(/run/netns/..., /proc/PID/ns/net) as the runtime gave them. A worker never
imports anything (preload did it all): after entering the caller's mount
namespace, the agent's own files may not be there.
SIGTERM stops accepting, removes the socket (callers then work in-process)
and waits for the invocations in flight.

The agent's own process is a list of services walked by one loop
(cni/agent/service.py): the server's workers and the heartbeat
(cni/agent/server.py), healing (healing.py), the DHCP renewer (dhcp.py),
scrapes and the textfile (metrics.py), each saying which fds it waits on and when it is next due.
options.py reads the command line, preload.py warms up, worker.py is one
invocation served; pools.py and networks.py read what the metrics report.
"""


import os
import signal
import sys

from cni.agent import dhcp, healing, metrics, options as command_line, preload, server, service, worker
from cni.agent.service import log


class Agent:
    """underlayd's own process: its services, walked until SIGTERM, then stopped in turn."""

    def __init__(self, options):
        self.options = options
        self.stopping = False
        self.server = None

    def start(self):
        """Everything that can fail at start fails before the socket exists, or removes it."""
        options = self.options
        preload.preload()
        http = metrics.metrics_listener(options.metrics) if options.metrics else None
        children, reports, counters = service.Children(), service.Reports(), metrics.Metrics()
        counters.listen(reports)
        reports.on("K", worker.note_served)   # the kind each request was: what spares warm up for
        self.server = server.Server(options, children, reports, counters)
        self.server.bind()
        renewer = dhcp.Renewer(options, children, reports, counters)   # opens --dhcp-dir before any fork
        renewer.serve_workers(reports.report)
        children.catch_signals()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)

        def page():
            return counters.render(len(self.server.busy), len(self.server.idle), options)

        self.services = [children, reports, self.server, server.Heartbeat(options.socket),
                         healing.Healing(options, children, reports.report, counters), renewer]
        if http is not None:
            self.services.append(metrics.Scrapes(http, page, options))
        if options.textfile:
            self.services.append(metrics.Textfile(options, children, page))
        log(f"serving on {options.socket} (pid {os.getpid()}, workers {options.workers}, "
            f"spares {options.spares}, queue {options.queue})")
        for flag, path in options.named_dirs:   # a typo here would otherwise read as "nothing there"
            if not os.path.isdir(path):
                log(f"warning: {flag} {path} {'is not a directory' if os.path.exists(path) else 'does not exist'}: "
                    f"{command_line.NAMED_DIRS[flag]}")

    def stop(self, *_):
        self.stopping = True

    def loop(self):
        service.walk(self.services, lambda: self.stopping)
        for each in self.services:
            each.stop()
        log("stopped")

    def remove_socket(self):
        if self.server is not None:
            self.server.remove_socket()


def main(argv=None):
    try:
        options = command_line.Options(sys.argv[1:] if argv is None else argv)
    except command_line.Usage as e:
        sys.stderr.write((f"underlayd: {e}\n" if e.args[0] else "") + command_line.USAGE)
        sys.exit(2 if e.args[0] else 0)
    agent = Agent(options)
    try:
        agent.start()
    except BaseException:
        agent.remove_socket()   # a failed start leaves nothing behind
        raise
    agent.loop()
    sys.exit(0)
