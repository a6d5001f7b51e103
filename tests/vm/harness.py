"""Boot Debian's stock kernel under qemu (TCG) and run one command in it.

This machine's kernel has no ipvlan, dummy or 802.1q links, and its /dev/kvm
cannot run a stock kernel, so tests needing them run in a VM instead. The guest
sees the host's root file system read-only over 9p, under a tmpfs overlay, so the
host's Python, pytest and tools run there unchanged. The checkout (and any extra
share) is mounted read-write at its own path, and a per-run directory carries the
command's output and exit code back.

The kernel .deb and busybox-static are fetched with `apt-get download` and
unpacked, never installed; what is built from them is cached per kernel version.
Nothing is mounted or left running on the host.

    python3 -m tests.vm.harness -- ip -d link
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import fcntl
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


class VMError(Exception):
    """The VM could not be prepared, did not boot, or did not finish in time."""


@dataclass(frozen=True)
class Kernel:
    """A prepared kernel in the cache: vmlinux, initramfs and a module tree."""

    version: str
    dir: Path

    @property
    def vmlinux(self) -> Path:
        return self.dir / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.cpio"

    @property
    def modules(self) -> Path:
        return self.dir / "modules" / "lib" / "modules" / self.version

    @property
    def ready(self) -> bool:
        return (self.dir / "ready").exists()


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


def parse_kernel_depends(show: str) -> str:
    """The versioned image package named by linux-image-amd64's Depends."""
    m = re.search(r"^Depends:.*?\b(linux-image-\d[\w.+~-]*?-amd64)\b", show, re.M)
    if not m:
        raise VMError("linux-image-amd64 names no versioned kernel package:\n" + show)
    return m.group(1)


def kernel_package() -> str:
    """Ask apt which kernel linux-image-amd64 points to now (it moves)."""
    argv = ["apt-cache", "show", "--no-all-versions", "linux-image-amd64"]
    for attempt in range(2):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            return parse_kernel_depends(proc.stdout)
        if attempt == 0 and os.geteuid() == 0:
            # A fresh machine may never have fetched package lists.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise VMError(f"apt-cache cannot resolve linux-image-amd64: {proc.stderr.strip()}")


def prepare(log=lambda msg: None) -> Kernel:
    """Return the cached kernel, fetching and building it on first use."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        package = kernel_package()
    except (VMError, OSError) as e:
        # Offline, or apt is missing: any kernel built before will do.
        cached = sorted((k for k in _cached_kernels(root) if k.ready), key=lambda k: k.dir.stat().st_mtime)
        if cached:
            return cached[-1]
        raise VMError(f"no cached kernel and cannot resolve one: {e}") from e
    kernel = Kernel(package.removeprefix("linux-image-"), root / package.removeprefix("linux-image-"))
    if kernel.ready:
        return kernel
    # xdist workers may race here: one builds, the others wait and reuse it.
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not kernel.ready:
            for stale in root.glob(".build-*"):
                shutil.rmtree(stale, ignore_errors=True)
            _build(package, kernel, log)
    return kernel


def _cached_kernels(root: Path):
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            yield Kernel(d.name, d)


def _build(package: str, kernel: Kernel, log) -> None:
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=kernel.dir.parent))
    try:
        debs = work / "debs"
        tree = work / "tree"
        out = work / "out"
        for d in (debs, tree, out):
            d.mkdir()
        log(f"downloading {package} and busybox-static")
        apt = ["apt-get", "download", "-q"]
        if os.geteuid() == 0:
            apt += ["-o", "APT::Sandbox::User=root"]  # _apt cannot enter our temp dir
        _check([*apt, package, "busybox-static"], cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            _check(["dpkg-deb", "-x", str(deb), str(tree)])
        shutil.rmtree(debs)

        log(f"building the VM kernel {kernel.version}")
        unpacked = _first_existing(tree / "lib/modules" / kernel.version, tree / "usr/lib/modules" / kernel.version)
        moddir = out / "modules/lib/modules" / kernel.version
        moddir.parent.mkdir(parents=True)
        shutil.move(unpacked, moddir)
        # The .deb ships no modules.dep; modprobe needs it.
        _check([_depmod(), "-b", str(out / "modules"), kernel.version])
        bzimage = (tree / "boot" / f"vmlinuz-{kernel.version}").read_bytes()
        (out / "vmlinux").write_bytes(extract_vmlinux(bzimage))
        busybox = _first_existing(tree / "bin/busybox", tree / "usr/bin/busybox")
        (out / "initrd.cpio").write_bytes(build_initramfs(busybox, moddir))
        (out / "ready").write_text(package + "\n")
        if kernel.dir.exists():
            shutil.rmtree(kernel.dir)
        out.rename(kernel.dir)
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

def _boot_script(kernel: Kernel, shares: list[Path]) -> str:
    q = shlex.quote
    lines = [
        'die() { echo "uvm: $*"; echo "$*" > /xrun/error; sync; echo 0 > /proc/sys/kernel/printk; poweroff -f; }',
        "n=/newroot",
        f"mount -t 9p -o {P9_OPTS},cache=loose,ro uvmroot /lower || die 'cannot mount the host root'",
        "mount -t tmpfs -o mode=755 tmpfs /upper && mkdir /upper/data /upper/work",
        # The overlay makes the host root writable for the guest; writes stay in RAM.
        "mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay $n"
        " || die 'cannot mount the overlay'",
        # busybox modprobe (and the kernel's module autoload) look here.
        f"mkdir -p /lib/modules && ln -s /lower{q(str(kernel.modules))} /lib/modules/{q(kernel.version)}",
        *(f"modprobe {m} {MODULE_PARAMS.get(m, '')} || echo 'uvm: modprobe {m} failed' >>/xrun/out" for m in FEATURE_MODULES),
        "ip link set lo up",
        "mount -t proc proc $n/proc && mount -t sysfs sysfs $n/sys && mount -t devtmpfs devtmpfs $n/dev"
        " || die 'cannot mount proc, sys or dev'",
        "mkdir -p $n/dev/pts $n/dev/shm && mount -t devpts devpts $n/dev/pts && mount -t tmpfs tmpfs $n/dev/shm",
        # ip netns keeps its mount points in /run/netns.
        "mount -t tmpfs -o mode=755 tmpfs $n/run && mkdir -p $n/run/netns $n" + GUEST_RUN_DIR,
        "mount -o bind /xrun $n" + GUEST_RUN_DIR + " || die 'cannot bind the run directory'",
        "mount -t tmpfs -o mode=1777 tmpfs $n/tmp",
    ]
    for i, path in enumerate(shares):
        lines.append(f"mkdir -p $n{q(str(path))} && mount -t 9p -o {P9_OPTS},cache=loose uvmshare{i} $n{q(str(path))}"
                     f" || die {q(f'cannot mount {path}')}")
    lines += [
        "touch /xrun/started",
        f"chroot $n /bin/sh {GUEST_RUN_DIR}/job.sh </dev/null >>/xrun/out 2>&1",
        "echo $? >/xrun/rc",
    ]
    return "\n".join(lines) + "\n"


def _job_script(kernel: Kernel, argv: list[str], env: dict[str, str], cwd: Path) -> str:
    q = shlex.quote
    return "\n".join([
        # The host root has no modules for this kernel; point the guest's tools at the cached ones.
        f"mkdir -p /lib/modules && ln -sfn {q(str(kernel.modules))} /lib/modules/{q(kernel.version)}",
        f"cd {q(str(cwd))} || exit 125",
        "exec env -i " + " ".join(q(f"{k}={v}") for k, v in env.items()) + " " + shlex.join(argv),
    ]) + "\n"


def qemu_argv(kernel: Kernel, rundir: Path, shares: list[Path]) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise VMError("qemu-system-x86_64 not found: install qemu-system-x86 (build/deps.sh)")

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
    with tempfile.TemporaryDirectory(prefix="underlay-vm-") as tmp:
        rundir = Path(tmp)
        (rundir / "boot.sh").write_text(_boot_script(kernel, shares))
        (rundir / "job.sh").write_text(_job_script(kernel, list(argv), full_env, cwd))
        (rundir / "out").touch()
        return _wait(qemu_argv(kernel, rundir, shares), rundir, timeout, stream)


def _wait(qemu: list[str], rundir: Path, timeout: float, stream) -> Run:
    start = time.monotonic()
    started = None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(rundir / "qemu.log", "wb") as qlog, open(rundir / "out", "rb") as out:
        proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                if started is None and (rundir / "started").exists():
                    started = time.monotonic()
                if stream is not None:
                    _pump(out, stream, decoder)
                if time.monotonic() - start > timeout:
                    raise VMError(f"the VM did not finish within {timeout:.0f} s" + _diagnostics(rundir))
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if stream is not None:
            _pump(out, stream, decoder)
    total = time.monotonic() - start
    error = rundir / "error"
    if error.exists():
        raise VMError("the VM could not set up: " + error.read_text().strip() + _diagnostics(rundir))
    try:
        returncode = int((rundir / "rc").read_text())
    except (OSError, ValueError):
        raise VMError(f"the VM stopped (qemu exit {proc.returncode}) before the command finished"
                      + _diagnostics(rundir)) from None
    output = (rundir / "out").read_bytes().decode(errors="replace")
    return Run(returncode, output, started and started - start, total)


def _pump(src, stream, decoder) -> None:
    chunk = src.read()
    if chunk:
        stream.write(decoder.decode(chunk))
        stream.flush()


def _diagnostics(rundir: Path) -> str:
    parts = []
    for name in ("qemu.log", "console.log", "out"):
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
    parser.add_argument("command", nargs="*", help="command to run (after --); default: a shell-less uname -a")
    opts = parser.parse_args(args)

    def log(msg: str) -> None:
        print(f"underlay-vm: {msg}", file=sys.stderr)

    try:
        kernel = prepare(log)
        if opts.prepare:
            log(f"kernel {kernel.version} ready in {kernel.dir}")
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
