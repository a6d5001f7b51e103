"""underlayd's command line: its options, their defaults and the usage text."""

from cni import handoff
from ipam import cluster as cluster_ipam, host_local
from ipam.dhcp import plugin as dhcp

DEFAULT_WORKERS = 8
DEFAULT_SPARES = 2
DEFAULT_QUEUE = 256
DEFAULT_HEAL_EVERY = 300  # seconds between healing runs (and one at start)
DEFAULT_DATA_DIR = host_local.DEFAULT_DATA_DIR   # host-local's default dataDir
DEFAULT_CONFIG_DIR = "/etc/cni/net.d"        # the runtime's conflists: the pools' ranges, cluster-ipam's networks
DEFAULT_CLUSTER_DATA_DIR = cluster_ipam.DEFAULT_DATA_DIR   # cluster-ipam's default dataDir: its networks' records
DEFAULT_DHCP_DIR = dhcp.DEFAULT_DIR   # the dhcp IPAM's lease records (the renewer's)


class Options:
    def __init__(self, argv):
        self.socket = handoff.DEFAULT_SOCKET
        self.metrics = None
        self.workers = DEFAULT_WORKERS
        self.spares = DEFAULT_SPARES
        self.queue = DEFAULT_QUEUE
        self.textfile = None
        self.data_dirs = []
        self.heal_every = DEFAULT_HEAL_EVERY
        self.config_dir = DEFAULT_CONFIG_DIR
        self.cluster_data_dirs = []
        self.dhcp_dir = DEFAULT_DHCP_DIR
        self.named_dirs = []   # (flag, path) of each directory named on the command line
        args = list(argv)
        while args:
            flag = args.pop(0)
            name, eq, value = flag.partition("=")
            if name in ("-h", "--help"):
                raise Usage(None)
            if name not in ("--socket", "--metrics", "--textfile", "--workers", "--spares", "--queue",
                            "--data-dir", "--heal-every", "--config-dir", "--cluster-data-dir", "--dhcp-dir"):
                raise Usage(f"unknown option {flag!r}")
            if not eq:
                if not args:
                    raise Usage(f"{name} needs a value")
                value = args.pop(0)
            if name == "--socket":
                if not value.startswith("/"):
                    raise Usage("--socket: must be an absolute path")
                self.socket = value
            elif name == "--metrics":
                host, colon, port = value.rpartition(":")
                if not colon or not port.isdigit() or int(port) > 65535:
                    raise Usage(f"--metrics: {value!r} is not HOST:PORT")
                self.metrics = (host.strip("[]") or "0.0.0.0", int(port))
            elif name in ("--data-dir", "--cluster-data-dir"):
                if not value.startswith("/"):
                    raise Usage(f"{name}: must be an absolute path")
                (self.data_dirs if name == "--data-dir" else self.cluster_data_dirs).append(value)
                self.named_dirs.append((name, value))
            elif name == "--dhcp-dir":
                if not value.startswith("/"):
                    raise Usage("--dhcp-dir: must be an absolute path")
                self.dhcp_dir = value
            elif name == "--config-dir":
                if not value.startswith("/"):
                    raise Usage("--config-dir: must be an absolute path")
                self.config_dir = value
                self.named_dirs.append((name, value))
            elif name == "--heal-every":
                if not value.isdigit():
                    raise Usage(f"--heal-every: {value!r} is not a number of seconds (0: never)")
                self.heal_every = int(value)
            elif name == "--textfile":
                if not value.startswith("/") or not value.endswith(".prom"):
                    raise Usage("--textfile: must be an absolute path ending in .prom")
                self.textfile = value
            else:
                if not value.isdigit() or int(value) < (0 if name == "--spares" else 1):
                    raise Usage(f"{name}: {value!r} is not a positive number")
                setattr(self, name[2:], int(value))
        self.spares = min(self.spares, self.workers)
        self.data_dirs = self.data_dirs or [DEFAULT_DATA_DIR]
        self.cluster_data_dirs = self.cluster_data_dirs or [DEFAULT_CLUSTER_DATA_DIR]


class Usage(Exception):
    pass


# what a directory named on the command line that is not there means (logged as a warning at start)
NAMED_DIRS = {
    "--config-dir": "no network configs are read from it (pool figures, cluster-ipam healing) until it is there",
    "--data-dir": "no host-local leases to heal there until a plugin creates it",
    "--cluster-data-dir": "no cluster-ipam records to heal there until a plugin creates it",
}


USAGE = ("usage: underlayd [--socket PATH] [--metrics HOST:PORT] [--textfile PATH] [--workers N] [--spares N]"
         " [--queue N] [--data-dir DIR]... [--heal-every SECONDS] [--config-dir DIR]"
         " [--cluster-data-dir DIR]... [--dhcp-dir DIR]\n"
         f"  --socket   the agent's socket (default {handoff.DEFAULT_SOCKET}; plugins read $UNDERLAY_SOCKET)\n"
         f"  --workers  invocations served at once (default {DEFAULT_WORKERS}); more wait in the queue\n"
         f"  --spares   workers forked ahead of requests (default {DEFAULT_SPARES})\n"
         f"  --queue    connections waiting for a worker (default {DEFAULT_QUEUE})\n"
         f"  --data-dir host-local dataDir to heal and report (repeatable; default {DEFAULT_DATA_DIR})\n"
         f"  --heal-every  seconds between releases of leases whose netns is gone (default {DEFAULT_HEAL_EVERY}; 0: never)\n"
         "  --metrics  serve Prometheus text at http://HOST:PORT/metrics (and /healthz)\n"
         "  --textfile also write it to PATH.prom every 15 s, for node-exporter's textfile collector\n"
         f"  --config-dir  the network configs whose pools are reported and whose cluster-ipam\n"
         f"             networks are healed (default {DEFAULT_CONFIG_DIR})\n"
         "  --cluster-data-dir  cluster-ipam dataDir whose recorded networks (a NetworkAttachmentDefinition's,\n"
         "             which no config file names) are healed and reported too (repeatable; default\n"
         f"             {DEFAULT_CLUSTER_DATA_DIR}; the dataDirs of --config-dir's cluster-ipam configs always)\n"
         f"  --dhcp-dir the dhcp IPAM's lease records, renewed by the agent (default {DEFAULT_DHCP_DIR};\n"
         "             created 0700 when missing)\n")
