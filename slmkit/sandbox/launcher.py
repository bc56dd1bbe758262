"""Trusted launcher: puts up the sandbox's walls in its own process, then execs the sandboxed interpreter.

The evaluator runs ``python -I -S launcher.py CONFIG_FD`` (isolated, no site). Stdlib only: it
imports nothing from slmkit and loads its two helpers, ``seccomp.py`` and ``landlock.py``, from
its own directory by path, so it works wherever the package files are (a checkout or a wheel).
Doing this in a launcher rather than a ``preexec_fn`` keeps ``run_many``'s threads safe (no Python
runs between fork and exec in the evaluator) and lets setup failures be reported.

Order: move the inherited fds into place; unshare user (unprivileged only), network, IPC and mount
namespaces; remount everything read-only with private size-capped tmpfs on /tmp & co.; rlimits;
drop to the sandbox uid; ``PR_SET_NO_NEW_PRIVS``; Landlock; seccomp; ``PR_SET_PDEATHSIG``; exec
``python -I -S -c <prelude.py> 3 4 5`` with fds 3 (program source), 4 (completion token), 5
(completion report). Messages go to the evaluator as JSON lines on the status fd, which is
close-on-exec: EOF after ``ready`` means the exec happened.
"""

import ctypes
import fcntl
import importlib.util
import json
import os
import re
import resource
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_STRICTATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 24
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_FD, TOKEN_FD, REPORT_FD = 3, 4, 5


class SetupError(Exception):
    """A wall that must hold could not be put up."""


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(f"_slmkit_sandbox_{name}", os.path.join(HERE, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def read_config(fd: int) -> dict:
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    os.close(fd)
    return json.loads(data)


def place_fds(fds: dict) -> int:
    """Program source, token and report to 3, 4, 5 (inheritable); returns the close-on-exec status fd."""
    moved = {name: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for name, fd in fds.items()}  # clear of 3-5
    for fd in fds.values():
        os.close(fd)
    for target, name in ((SOURCE_FD, "source"), (TOKEN_FD, "token"), (REPORT_FD, "report")):
        os.dup2(moved.pop(name), target, inheritable=True)
    status = moved.pop("status")
    for fd in moved.values():
        os.close(fd)
    for fd in list(map(int, os.listdir("/proc/self/fd"))):  # nothing else may reach the program
        if fd > REPORT_FD and fd != status:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
    return status


def enter_namespaces(libc, cfg: dict, iso: dict) -> None:
    def unshare(flags):
        return libc.unshare(flags) == 0

    use_ns = cfg["namespaces"]
    if cfg["uid"] is None:
        # Unprivileged evaluator: a user namespace (same uid inside) grants the other namespaces.
        myuid, mygid = os.getuid(), os.getgid()
        iso["userns"] = use_ns and unshare(CLONE_NEWUSER)
        if iso["userns"]:
            try:
                for name, text in (("setgroups", "deny"), ("uid_map", f"{myuid} {myuid} 1"),
                                   ("gid_map", f"{mygid} {mygid} 1")):
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
            except OSError as e:
                raise SetupError(f"user namespace id maps: {e}") from None
    iso["net"] = use_ns and unshare(CLONE_NEWNET)
    iso["ipc"] = use_ns and unshare(CLONE_NEWIPC)
    iso["mnt"] = use_ns and unshare(CLONE_NEWNS)


def _mount_points() -> list[bytes]:
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mp = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), line.split()[4])
            if mp not in points:
                points.append(mp)
    return points


def seal_filesystem(libc, cfg: dict) -> str:
    """In the new mount namespace: everything read-only, private tmpfs on the shared writable dirs."""
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise SetupError(f"mount --make-rprivate /: errno {ctypes.get_errno()}")
    for mp in _mount_points():
        try:
            fl = os.statvfs(mp).f_flag
        except OSError:
            continue
        keep = MS_BIND | MS_REMOUNT | MS_RDONLY
        keep |= (MS_NOSUID if fl & 2 else 0) | (MS_NODEV if fl & 4 else 0) | (MS_NOEXEC if fl & 8 else 0)
        keep |= MS_NOATIME if fl & 1024 else (0 if fl & 4096 else MS_STRICTATIME)
        keep |= MS_NODIRATIME if fl & 2048 else 0
        libc.mount(None, mp, None, keep, None)  # failures (odd pseudo-fs) are tolerated
    opts = f"size={cfg['tmpfs_mb']}m,nr_inodes={cfg['tmpfs_inodes']},mode=1777".encode()
    done = set()
    for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
        real = os.path.realpath(d)
        if real in done or not os.path.isdir(real):
            continue
        done.add(real)
        if libc.mount(b"tmpfs", real.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0 and real == "/tmp":
            raise SetupError(f"mount tmpfs on /tmp: errno {ctypes.get_errno()}")
    workdir = os.path.join("/tmp", os.path.basename(cfg["host_dir"]))
    os.mkdir(workdir, 0o700)
    if cfg["uid"] is not None:
        os.chown(workdir, cfg["uid"], cfg["gid"])
    return workdir


def set_limits(cfg: dict) -> None:
    def limit(res, soft, hard=None):
        hard = soft if hard is None else hard
        _, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(res, (soft, hard))

    limit(resource.RLIMIT_CPU, cfg["cpu_seconds"], cfg["cpu_seconds"] + 1)  # SIGXCPU, then SIGKILL
    limit(resource.RLIMIT_AS, cfg["memory_mb"] << 20)
    limit(resource.RLIMIT_NPROC, cfg["max_procs"])
    limit(resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20)
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    limit(resource.RLIMIT_MSGQUEUE, 0)


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise SetupError("privilege drop did not stick")


def build_walls(libc, cfg: dict, seccomp, landlock) -> tuple[dict, str]:
    """Everything between the evaluator's fork and the sandboxed exec; returns (isolation, workdir)."""
    iso = {"uid_drop": cfg["uid"] is not None}
    enter_namespaces(libc, cfg, iso)
    workdir = seal_filesystem(libc, cfg) if iso["mnt"] else cfg["workdir"]
    os.chdir(workdir)
    set_limits(cfg)
    if cfg["uid"] is not None:
        drop_privileges(cfg["uid"], cfg["gid"])
    iso["no_new_privs"] = libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    iso["landlock_tcp"] = iso["landlock_scopes"] = False
    if cfg["landlock"] and iso["no_new_privs"]:
        iso.update(landlock.restrict(libc))
    iso["seccomp"] = False
    if cfg["seccomp"] and iso["no_new_privs"]:
        prog = seccomp.build(os.uname().machine, cfg["protect_pids"])
        iso["seccomp"] = prog is not None and seccomp.install(libc, prog)
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # SIGKILL when the evaluator dies (after setuid, which clears it)
    if os.getppid() != cfg["parent_pid"]:
        raise SetupError("evaluator went away")
    return iso, workdir


def main(argv: list[str]) -> None:
    cfg = read_config(int(argv[1]))
    status = place_fds(cfg["fds"])

    def report(**kw):
        os.write(status, (json.dumps(kw) + "\n").encode())

    try:
        with open(os.path.join(HERE, "prelude.py"), encoding="utf-8") as f:
            prelude = f.read()
        libc = _libc()
        # Everything is loaded now: after the uid drop the evaluator's Python (say, under /root) may be unreadable.
        iso, workdir = build_walls(libc, cfg, _sibling("seccomp"), _sibling("landlock"))
        env = {"HOME": workdir, "TMPDIR": workdir}
        env.update(cfg["env"])
        report(ready=True, isolation=iso)
        python = cfg["python"]
        os.execve(python, [python, "-I", "-S", "-c", prelude, str(SOURCE_FD), str(TOKEN_FD), str(REPORT_FD)], env)
    except BaseException as e:  # noqa: BLE001 - every failure must reach the evaluator
        report(error=f"{type(e).__name__}: {e}")
        os._exit(125)


if __name__ == "__main__":
    main(sys.argv)
