"""Boot a stock Debian kernel and run one command in it.

This machine's kernel has no ipvlan, dummy or 802.1q links, and its /dev/kvm
cannot run a stock kernel, so tests needing them run in a VM instead. The guest
sees the host's root file system read-only, under a tmpfs overlay, so the
host's Python, pytest and tools run there unchanged. The checkout (and any extra
share) is mounted read-write at its own path, and a per-run directory carries the
command's output and exit code back. Nothing is mounted or left running on the host.

The backend is qemu: Debian's linux-image-amd64 under qemu TCG, host root over 9p,
with a busybox initramfs to get there. (User-Mode Linux was a second backend until
this machine kind's host kernel, 6.18, left it unable to run any guest process: its
init died of SIGSEGV at its first exec, every boot.)
The .debs are fetched with `apt-get download` and unpacked, never installed;
what is built from them is cached per kernel version.

    python3 -m tests.vm.harness -- ip -d link
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import fcntl
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Loaded from the initramfs in this order, to reach the 9p root and the overlay.
BOOT_MODULES = (
    "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
    "virtio_pci", "virtio_mmio", "netfs", "fscache", "9pnet", "9pnet_virtio",
    "9p", "overlay",
)
# Loaded before the command runs: what kernel-marked tests need.
FEATURE_MODULES = ("ipvlan", "8021q", "dummy", "macvlan", "veth")
# Without this, loading dummy creates a stray dummy0 that tests would trip over.
MODULE_PARAMS = {"dummy": "numdummies=0"}

P9_OPTS = "trans=virtio,version=9p2000.L,msize=262144"
XZ_MAGIC = b"\xfd7zXZ\x00"
GUEST_RUN_DIR = "/run/uvm"
IN_VM_ENV = "UNDERLAY_VM"   # set for every command run in the guest
DEFAULT_TIMEOUT = 600.0
# Launch to command is 2-4 s idle and well under a minute under heavy load; past this the boot is stuck.
BOOT_TIMEOUT = 240.0
BOOT_ATTEMPTS = 2
BACKENDS = ("qemu",)
BACKEND_ENV = "UNDERLAY_VM_BACKEND"
DEFAULT_BACKEND = "qemu"  # the stock Debian kernel the issue asks for


class VMError(Exception):
    """The VM could not be prepared, did not boot, or did not finish in time."""


class BootStalled(VMError):
    """The guest never reached the command (seen under qemu TCG on a loaded machine: an empty
    console, the vCPUs idle; or a VM process that dies before the guest reaches it): a new VM is
    booted once before giving up. The command itself is never run twice."""


@dataclass(frozen=True)
class Kernel:
    """A prepared kernel in the cache, for one backend."""

    backend: str
    release: str    # what `uname -r` says in the guest
    dir: Path

    @property
    def vmlinux(self) -> Path:
        return self.dir / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.cpio"

    @property
    def modules(self) -> Path:
        return self.dir / "modules" / "lib" / "modules" / self.release

    @classmethod
    def load(cls, path: Path) -> Kernel | None:
        """The kernel built in path, or None if it is not (completely) there."""
        try:
            info = json.loads((path / "ready").read_text())
            return cls(info["backend"], info["release"], path)
        except (OSError, ValueError, KeyError):
            return None


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str
    boot_seconds: float | None   # launch until the command starts
    total_seconds: float


# --- preparing the kernel -------------------------------------------------

def cache_root() -> Path:
    if os.environ.get("UNDERLAY_VM_CACHE"):
        return Path(os.environ["UNDERLAY_VM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "underlay-vm"


def default_backend() -> str:
    backend = os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise VMError(f"{BACKEND_ENV}={backend!r}: choose one of {', '.join(BACKENDS)}")
    return backend


def parse_kernel_depends(show: str) -> str:
    """The versioned image package named by linux-image-amd64's Depends."""
    m = re.search(r"^Depends:.*?\b(linux-image-\d[\w.+~-]*?-amd64)\b", show, re.M)
    if not m:
        raise VMError("linux-image-amd64 names no versioned kernel package:\n" + show)
    return m.group(1)


def apt_show(package: str) -> str:
    """apt's record of the candidate version of package."""
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", package], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise VMError(f"apt-cache cannot resolve {package}: {proc.stderr.strip()}")
    return proc.stdout


def _wanted(backend: str) -> tuple[list[str], str]:
    """The packages to fetch now and the cache key they build into."""
    if backend not in BACKENDS:
        raise VMError(f"no {backend!r} backend: choose one of {', '.join(BACKENDS)}")
    # linux-image-amd64 moves to a new ABI name now and then; follow it.
    image = parse_kernel_depends(apt_show("linux-image-amd64"))
    return [image, "busybox-static"], image.removeprefix("linux-image-")


def prepare(backend: str | None = None, log=lambda msg: None) -> Kernel:
    """Return the cached kernel for backend, fetching and building it on first use."""
    backend = backend or default_backend()
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _prepare(backend, root, log)
    except (VMError, OSError) as e:
        error = e
    if os.geteuid() == 0:
        # Package lists may be missing (fresh machine) or name .debs the
        # archive has dropped since; refresh once and try again.
        log("refreshing the package lists")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        try:
            return _prepare(backend, root, log)
        except (VMError, OSError) as e:
            error = e
    # Offline: any kernel built before will do.
    cached = [k for k in map(Kernel.load, root.iterdir()) if k and k.backend == backend]
    if cached:
        kernel = max(cached, key=lambda k: k.dir.stat().st_mtime)
        log(f"using the cached {kernel.dir.name}: {error}")
        return kernel
    raise VMError(f"cannot prepare a {backend} kernel: {error}") from error


def _prepare(backend: str, root: Path, log) -> Kernel:
    packages, key = _wanted(backend)
    kernel = Kernel.load(root / key)
    if kernel:
        return kernel
    # xdist workers may race here: one builds, the others wait and reuse it.
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kernel = Kernel.load(root / key)
        if not kernel:
            for stale in root.glob(".build-*"):
                shutil.rmtree(stale, ignore_errors=True)
            kernel = _build(backend, packages, root / key, log)
    return kernel


def _build(backend: str, packages: list[str], dest: Path, log) -> Kernel:
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=dest.parent))
    try:
        debs, tree, out = work / "debs", work / "tree", work / "out"
        for d in (debs, tree, out):
            d.mkdir()
        log(f"downloading {' '.join(packages)}")
        apt = ["apt-get", "download", "-q"]
        if os.geteuid() == 0:
            apt += ["-o", "APT::Sandbox::User=root"]  # _apt cannot enter our temp dir
        _check([*apt, *packages], cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            _check(["dpkg-deb", "-x", str(deb), str(tree)])   # unpacked, never installed
        shutil.rmtree(debs)

        release = packages[0].removeprefix("linux-image-")
        unpacked = _first_existing(tree / "lib/modules" / release, tree / "usr/lib/modules" / release)
        log(f"building the {backend} kernel {release} in {dest}")
        kernel = Kernel(backend, release, dest)
        moddir = out / kernel.modules.relative_to(dest)
        moddir.parent.mkdir(parents=True)
        shutil.move(unpacked, moddir)
        # The kernel .deb ships no modules.dep; modprobe needs it.
        _check([_depmod(), "-b", str(out / "modules"), release])
        bzimage = (tree / "boot" / f"vmlinuz-{release}").read_bytes()
        (out / "vmlinux").write_bytes(extract_vmlinux(bzimage))
        busybox = _first_existing(tree / "bin/busybox", tree / "usr/bin/busybox")
        (out / "initrd.cpio").write_bytes(build_initramfs(busybox, moddir))
        (out / "ready").write_text(json.dumps({"backend": backend, "release": release, "packages": packages}))
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)
        return kernel
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _first_existing(*paths: Path) -> Path:
    for p in paths:
        if p.exists():
            return p
    raise VMError(f"not found in the unpacked packages: {paths[0]}")


def _depmod() -> str:
    found = shutil.which("depmod") or next((p for p in ("/usr/sbin/depmod", "/sbin/depmod") if os.path.exists(p)), None)
    if not found:
        raise VMError("depmod not found: install kmod (build/deps.sh)")
    return found


def _check(argv: list[str], **kw) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise VMError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage.

    qemu boots an ELF vmlinux directly, skipping the in-guest decompression
    (about 2.5 s under TCG). The payload is one xz stream followed by other
    data, so decode a single stream (like `xz -dc --single-stream`).
    """
    start = bzimage.find(XZ_MAGIC)
    while start != -1:
        try:
            data = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(bzimage[start:])
        except lzma.LZMAError:
            data = b""
        if data.startswith(b"\x7fELF"):
            return data
        start = bzimage.find(XZ_MAGIC, start + 1)
    raise VMError("no xz-compressed ELF kernel found in the bzImage")


def module_order(modules_dep: str, builtin: str, wanted) -> list[str]:
    """Paths of the wanted modules and their dependencies, dependencies first.

    Built-in and absent modules are skipped.
    """
    def name(path: str) -> str:
        return re.sub(r"\.ko(\.\w+)?$", "", path.rsplit("/", 1)[-1]).replace("-", "_")

    deps = {}
    for line in modules_dep.splitlines():
        if ":" in line:
            path, rest = line.split(":", 1)
            deps[name(path)] = (path, [name(d) for d in rest.split()])
    builtins = {name(p) for p in builtin.split()}
    order: list[str] = []

    def add(mod: str) -> None:
        if mod in builtins or mod not in deps or deps[mod][0] in order:
            return
        for dep in deps[mod][1]:
            add(dep)
        order.append(deps[mod][0])

    for mod in wanted:
        add(mod.replace("-", "_"))
    return order


INIT = f"""#!/bin/sh
# underlay VM init: load the 9p stack, then run the boot script the host left
# in the run directory. Power off whatever happens.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in /boot-modules/*.ko; do insmod "$m" || echo "uvm: insmod $m failed"; done
if mount -t 9p -o {P9_OPTS},cache=none uvmrun /xrun; then
    . /xrun/boot.sh
else
    echo "uvm: cannot mount the run directory"
fi
sync
echo 0 > /proc/sys/kernel/printk
poweroff -f
"""


def build_initramfs(busybox: Path, moddir: Path) -> bytes:
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    entries = [(d, stat.S_IFDIR | 0o755, b"") for d in
               ("bin", "dev", "proc", "sys", "xrun", "lower", "upper", "newroot", "boot-modules")]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, (5, 1)))
    entries.append(("sbin", stat.S_IFLNK | 0o777, b"bin"))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()))
    # --list names busybox itself, which must stay the real binary.
    entries += [(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in applets if a != "busybox"]
    entries.append(("init", stat.S_IFREG | 0o755, INIT.encode()))
    order = module_order((moddir / "modules.dep").read_text(), (moddir / "modules.builtin").read_text(), BOOT_MODULES)
    for i, path in enumerate(order):
        data = (moddir / path).read_bytes()
        if path.endswith(".xz"):
            data = lzma.decompress(data)  # busybox insmod wants a plain .ko
        elif not path.endswith(".ko"):
            raise VMError(f"cannot unpack compressed module {path}")
        base = re.sub(r"\.ko(\.\w+)?$", "", path.rsplit("/", 1)[-1])
        entries.append((f"boot-modules/{i:02d}-{base}.ko", stat.S_IFREG | 0o644, data))
    return cpio_newc(entries)


def cpio_newc(entries) -> bytes:
    """An uncompressed newc archive; entries are (name, mode, data), where a
    symlink's data is its target and a device's is (major, minor)."""
    out = bytearray()

    def pad():
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        rdev = (0, 0)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            rdev, data = data, b""
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                  0, 0, rdev[0], rdev[1], len(encoded), 0)
        out += b"070701" + "".join(f"{f:08x}" for f in fields).encode() + encoded
        pad()
        out += data
        pad()
    return bytes(out)


# --- running a command ----------------------------------------------------

# The initramfs ends up here: the host root, writable through a tmpfs
# overlay, at $n with modules, proc, sys, dev, run and the shares mounted; pid 1
# then chroots into it (kernel threads share pid 1's root, so module autoload
# finds the modules too) and runs stage2.sh.

def _new_root(kernel: Kernel, shares: list[Path], mount_share) -> list[str]:
    q = shlex.quote
    lines = [
        # The host root has no modules for this kernel: bind the cached tree in
        # before anything is mounted over the path it lives at.
        f"mkdir -p $n/lib/modules/{q(kernel.release)}"
        f" && mount -o bind $n{q(str(kernel.modules))} $n/lib/modules/{q(kernel.release)}"
        " || die 'cannot bind the kernel modules'",
        "mount -t proc proc $n/proc && mount -t sysfs sysfs $n/sys && mount -t devtmpfs devtmpfs $n/dev"
        " || die 'cannot mount proc, sys or dev'",
        "mkdir -p $n/dev/pts $n/dev/shm && mount -t devpts devpts $n/dev/pts && mount -t tmpfs tmpfs $n/dev/shm",
        # ip netns keeps its mount points in /run/netns.
        f"mount -t tmpfs -o mode=755 tmpfs $n/run && mkdir -p $n/run/netns $n{GUEST_RUN_DIR}",
        f"mount -o bind $xrun $n{GUEST_RUN_DIR} || die 'cannot bind the run directory'",
        # /tmp stays the overlay's: a tmpfs there would hide what the host keeps in /tmp.
    ]
    for i, path in enumerate(shares):
        lines.append(f"mkdir -p $n{q(str(path))} && {mount_share(i, path)} || die {q(f'cannot mount {path}')}")
    return lines + [f"exec chroot $n /bin/sh {GUEST_RUN_DIR}/stage2.sh", "die 'cannot chroot'"]


def _qemu_boot_script(kernel: Kernel, shares: list[Path]) -> str:
    """Sourced by the initramfs init (busybox) once the run directory is at /xrun."""
    return "\n".join([
        'die() { echo "uvm: $*"; echo "$*" > /xrun/error; sync; echo 0 > /proc/sys/kernel/printk; poweroff -f; }',
        "n=/newroot xrun=/xrun",
        f"mount -t 9p -o {P9_OPTS},cache=loose,ro uvmroot /lower || die 'cannot mount the host root'",
        "mount -t tmpfs -o mode=755 tmpfs /upper && mkdir /upper/data /upper/work",
        "mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay $n"
        " || die 'cannot mount the overlay'",
        *_new_root(kernel, shares, lambda i, path: f"mount -t 9p -o {P9_OPTS},cache={_share_cache(i)} uvmshare{i}"
                                                   f" $n{shlex.quote(str(path))}"),
    ]) + "\n"


def _share_cache(i: int) -> str:
    # The checkout (share 0) is read a lot: cached. Extra shares carry results back: uncached, so
    # each write is on the host at once and a VM that dies keeps what it wrote (no fsync needed).
    return "loose" if i == 0 else "none"


def _stage2(kernel: Kernel, argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """pid 1 in the guest's new root: load modules, run the command, power off."""
    q = shlex.quote
    run = GUEST_RUN_DIR
    return "\n".join([
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        *(f"modprobe {m} {MODULE_PARAMS.get(m, '')} || echo 'uvm: modprobe {m} failed' >>{run}/out"
          for m in FEATURE_MODULES),
        "ip link set lo up",
        # qemu's guest clock starts from the RTC, up to a second behind; a file
        # the host creates carries the host's time.
        f": > {run}/clock && date -s \"$(stat -c %y {run}/clock)\" >/dev/null",
        f"touch {run}/started",
        f"(cd {q(str(cwd))} && exec env -i {' '.join(q(f'{k}={v}') for k, v in env.items())} {shlex.join(argv)})"
        f" </dev/null >>{run}/out 2>&1",
        f"echo $? >{run}/rc",
        "sync",
        "echo 0 > /proc/sys/kernel/printk",
        # Host roots need not have a poweroff binary; sysrq always works.
        "echo o > /proc/sysrq-trigger",
        "sleep 60",
    ]) + "\n"


def qemu_argv(kernel: Kernel, rundir: Path, shares: list[Path]) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise VMError("qemu-system-x86_64 not found: install qemu-system-x86 (build/deps.sh)")
    (rundir / "boot.sh").write_text(_qemu_boot_script(kernel, shares))

    def virtfs(path: Path, tag: str, extra: str = "") -> list[str]:
        # qemu option values escape a comma by doubling it.
        return ["-virtfs", f"local,path={str(path).replace(',', ',,')},mount_tag={tag},"
                           f"security_model=none,multidevs=remap{extra}"]

    argv = [
        qemu, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "1024",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(kernel.vmlinux), "-initrd", str(kernel.initrd),
        "-append", "console=ttyS0 quiet loglevel=3 panic=-1",
        "-serial", f"file:{rundir / 'console.log'}",
        *virtfs(Path("/"), "uvmroot", ",readonly=on"),
        *virtfs(rundir, "uvmrun"),
    ]
    for i, path in enumerate(shares):
        argv += virtfs(path, f"uvmshare{i}")
    return argv


def boot(argv: list[str], timeout: float = DEFAULT_TIMEOUT, env: dict[str, str] | None = None,
         cwd: Path | str | None = None, shares=(), stream=None, kernel: Kernel | None = None) -> Run:
    """Boot a VM, run argv in it and power off.

    The command runs in the host's root file system (read-only underneath, a
    throw-away tmpfs on top) with the checkout and `shares` read-write at their
    own paths. Output is stdout and stderr interleaved; `stream`, a text file,
    gets it as it arrives. Raises VMError if the VM cannot run the command.
    """
    kernel = kernel or prepare()
    cwd = Path(cwd or REPO).resolve()
    shares = [REPO] + [Path(s).resolve() for s in shares if Path(s).resolve() != REPO]
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        IN_VM_ENV: "1",
        **(env or {}),
    }
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        with tempfile.TemporaryDirectory(prefix="underlay-vm-") as tmp:
            rundir = Path(tmp)
            (rundir / "stage2.sh").write_text(_stage2(kernel, list(argv), full_env, cwd))
            (rundir / "out").touch()
            try:
                return _wait(qemu_argv(kernel, rundir, shares), rundir, timeout, stream)
            except BootStalled as e:
                if attempt == BOOT_ATTEMPTS:
                    raise
                if stream is not None:
                    stream.write(f"uvm: {str(e).splitlines()[0]}; booting again\n")


def _wait(launch: list[str], rundir: Path, timeout: float, stream) -> Run:
    start = time.monotonic()
    started = None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(rundir / "vm.log", "wb") as qlog, open(rundir / "out", "rb") as out:
        proc = subprocess.Popen(launch, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                if started is None and (rundir / "started").exists():
                    started = time.monotonic()
                if stream is not None:
                    _pump(out, stream, decoder)
                if started is None and BOOT_TIMEOUT < timeout and time.monotonic() - start > BOOT_TIMEOUT:
                    raise BootStalled(f"the VM did not reach the command within {BOOT_TIMEOUT:.0f} s"
                                      + _diagnostics(rundir))
                if time.monotonic() - start > timeout:
                    raise VMError(f"the VM did not finish within {timeout:.0f} s" + _diagnostics(rundir))
                time.sleep(0.05)
        finally:
            _end_group(proc)
        if stream is not None:
            _pump(out, stream, decoder)
    total = time.monotonic() - start
    error = rundir / "error"
    if error.exists():
        raise VMError("the VM could not set up: " + error.read_text().strip() + _diagnostics(rundir))
    try:
        returncode = int((rundir / "rc").read_text())
    except (OSError, ValueError):
        if not (rundir / "started").exists():
            raise BootStalled(f"the VM stopped (exit {proc.returncode}) before reaching the command"
                              + _diagnostics(rundir)) from None
        raise VMError(f"the VM stopped (exit {proc.returncode}) before the command finished"
                      + _diagnostics(rundir)) from None
    output = (rundir / "out").read_bytes().decode(errors="replace")
    return Run(returncode, output, started and started - start, total)


def _end_group(proc: subprocess.Popen, patience: float = 10.0) -> None:
    """Kill what is left of the VM's process group and wait until it is gone."""
    deadline = time.monotonic() + patience
    while True:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.poll()
        try:
            os.killpg(proc.pid, 0)   # orphans count until pid 1 reaps them
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _pump(src, stream, decoder) -> None:
    chunk = src.read()
    if chunk:
        stream.write(decoder.decode(chunk))
        stream.flush()


def _diagnostics(rundir: Path) -> str:
    parts = []
    for name in ("vm.log", "console.log", "out"):
        with contextlib.suppress(OSError):
            # The serial console turns \n into \r\n.
            text = (rundir / name).read_bytes().decode(errors="replace").replace("\r\n", "\n").strip()
            if text:
                parts.append(f"--- {name} (tail) ---\n" + "\n".join(text.splitlines()[-40:]))
    return "\n" + "\n".join(parts) if parts else ""


def run_in_vm(argv: list[str], timeout: float = DEFAULT_TIMEOUT, **kw) -> tuple[int, str]:
    """Run argv in a fresh VM; return its exit code and output (stdout+stderr)."""
    run = boot(argv, timeout, **kw)
    return run.returncode, run.output


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.vm.harness",
        description="Run a command in a VM booted on Debian's stock kernel (ipvlan, 802.1q, dummy...).")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds (default %(default)s)")
    parser.add_argument("--timings", action="store_true", help="print boot and total time to stderr")
    parser.add_argument("--prepare", action="store_true", help="only fetch and build the kernel")
    parser.add_argument("--backend", choices=BACKENDS, help=f"default: ${BACKEND_ENV} or {DEFAULT_BACKEND}")
    parser.add_argument("command", nargs="*", help="command to run (after --); default: uname -a")
    opts = parser.parse_args(args)

    def log(msg: str) -> None:
        print(f"underlay-vm: {msg}", file=sys.stderr)

    try:
        kernel = prepare(opts.backend, log)
        if opts.prepare:
            log(f"{kernel.backend} kernel {kernel.release} ready in {kernel.dir}")
            return 0
        run = boot(opts.command or ["uname", "-a"], opts.timeout, cwd=Path.cwd(), stream=sys.stdout, kernel=kernel)
    except VMError as e:
        log(str(e))
        return 125
    if opts.timings:
        boot_s = f"{run.boot_seconds:.2f} s" if run.boot_seconds is not None else "?"
        log(f"launch to command: {boot_s}; total: {run.total_seconds:.2f} s; exit {run.returncode}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
