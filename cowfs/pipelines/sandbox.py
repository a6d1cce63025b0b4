"""How a datum's process is started: bubblewrap, a container engine, or directly.

Every mode gives the code the same view: inputs at `/pfs/<name>` (read-only), output at
`/pfs/out`, and `PFS_<NAME>` / `PFS_OUT` in the environment pointing at them. A runner that is
root runs the code as an unprivileged user (`config.sandbox_user`, `nobody` by default), and
bubblewrap binds in only what running code needs: the system's programs and libraries, a few
files of `/etc` (no `/etc/shadow`), Python and cowfs. Bubblewrap adds no
network and a read-only host `/usr`; without it (or where it cannot start, as in some containers)
the code runs directly and only the environment variables tell it where things are, which the
runner says once, loudly, rather than failing.

`python3` in a transform is the Python that runs cowfs, and `cowfs.pipelines.batch` is importable
in every mode, so batching helpers work without installing anything into the sandbox.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cowfs
from cowfs.errors import CowfsError
from cowfs.pipelines.spec import PipelineSpec, env_name

#: Where the control directory (the batch protocol's FIFO) appears inside a sandbox.
CTL_INSIDE = "/run/cowfs"
_HOST_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
#: What of /etc a program needs to run (the loader's cache, time zone, certificates, names of
#: users and hosts); not the rest, which holds the host's secrets (`shadow`, keys, tokens).
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone",
        "ssl", "ca-certificates", "ca-certificates.conf", "passwd", "group", "nsswitch.conf",
        "hosts", "host.conf", "mime.types", "fonts", "os-release", "debian_version", "protocols",
        "services", "gai.conf", "python3", "login.defs")  # fmt: skip
_ENGINES = ("podman", "docker")


class SandboxUnavailable(CowfsError):
    """The spec asks for something this machine cannot run (an image with no engine)."""


@dataclass(frozen=True)
class Sandbox:
    kind: str  # bwrap | direct | podman | docker
    #: Why a weaker mode was chosen, shown once per process; empty when nothing was given up.
    reason: str = ""
    #: The (uid, gid) the code runs as; None: the runner's own.
    user: tuple[int, int] | None = None


@functools.lru_cache(maxsize=4)
def bwrap_problem(user: tuple[int, int] | None = None) -> str:
    """Empty when bubblewrap works here; otherwise why not. Checked once per process."""
    forced = os.environ.get("COWFS_SANDBOX", "").lower()
    if forced in ("none", "direct", "off"):
        return "COWFS_SANDBOX=none"
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    # The probe runs the very argv of a real run (namespaces, binds, /pfs layout): a kernel or
    # container may allow some of them and not others, and a probe that checks less would keep
    # bubblewrap only for every datum to fail.
    try:
        with tempfile.TemporaryDirectory(prefix="cowfs-bwrap-probe-") as tmp:
            work = Path(tmp)
            (work / "pfs" / "out").mkdir(parents=True)
            (work / "ctl").mkdir()
            argv = bwrap_argv(work, {"PATH": "/usr/bin:/bin"}, ["true"], user)
            r = subprocess.run(argv, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap does not start: {e}"
    if r.returncode != 0:
        msg = r.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap does not start here: {msg[-1] if msg else f'exit {r.returncode}'}"
    return ""


@functools.lru_cache(maxsize=4)
def engine_problem(engine: str) -> str:
    try:
        r = subprocess.run([engine, "info"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{engine} does not answer: {e}"
    if r.returncode != 0:
        lines = r.stderr.decode(errors="replace").strip().splitlines()
        return f"{engine} is installed but not usable: {lines[-1] if lines else 'error'}"
    return ""


def choose(spec: PipelineSpec, user: tuple[int, int] | None = None) -> Sandbox:
    """The mode for this spec on this machine; raises when an image cannot run at all.
    `user` is who the code runs as (`config.sandbox_user()`)."""
    if spec.transform.image:
        installed = [e for e in _ENGINES if shutil.which(e)]
        if not installed:
            raise SandboxUnavailable(
                f"pipeline {spec.name} runs image {spec.transform.image}, but neither podman "
                "nor docker is installed on this machine: install one, or drop `image` to run "
                "the command on the host"
            )
        problems = []
        for engine in installed:
            problem = engine_problem(engine)
            if not problem:
                return Sandbox(engine, user=user)
            problems.append(problem)
        raise SandboxUnavailable(
            f"pipeline {spec.name} runs image {spec.transform.image}, but " + "; ".join(problems)
        )
    problem = bwrap_problem(user)
    return Sandbox("direct", problem, user) if problem else Sandbox("bwrap", user=user)


def _python_dirs() -> list[str]:
    """What must be visible for `python3` and `import cowfs.pipelines.batch` to work."""
    pkg_root = str(Path(cowfs.__file__).resolve().parent.parent)
    dirs = {
        sys.prefix,
        sys.base_prefix,
        str(Path(sys.executable).resolve().parent.parent),
        pkg_root,
    }
    return sorted(d for d in dirs if not d.startswith("/usr/") and d != "/usr")


def bwrap_argv(
    workdir: Path, env: dict[str, str], cmd: list[str], user: tuple[int, int] | None = None
) -> list[str]:
    """The bubblewrap command line for `cmd` over `workdir`; shared with the probe so that
    what is tested is exactly what runs. With `user`, bwrap (root) sets up the binds and keeps
    only the capabilities to change identity, and `setpriv` becomes that user, with no
    supplementary groups and no capabilities left, before the code runs."""
    # The executable the probe found: the datum's PATH is not the runner's, and a different
    # bwrap there would make the probe's verdict about another program.
    argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--unshare-net",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session"]  # fmt: skip
    for d in _HOST_DIRS:
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    argv += ["--perms", "0755", "--dir", "/etc"]
    for name in _ETC:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # The private /tmp comes first: Python or cowfs itself may live under /tmp (a venv, a
    # CI checkout), and a tmpfs mounted after their binds would hide them.
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    made: set[str] = {"/", "/tmp"}
    for d in _python_dirs():
        # bwrap copies a private parent's mode (`/root` is 0700): make the parents passable.
        for parent in reversed(Path(d).parents):
            if str(parent) not in made and not str(parent).startswith("/tmp/"):
                made.add(str(parent))
                argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind-try", d, d]
    argv += ["--ro-bind", str(workdir / "pfs"), "/pfs"]
    argv += ["--bind", str(workdir / "pfs" / "out"), "/pfs/out"]
    argv += ["--perms", "0755", "--dir", str(Path(CTL_INSIDE).parent)]
    argv += ["--bind", str(workdir / "ctl"), CTL_INSIDE, "--chdir", "/pfs", "--clearenv"]
    for k, v in env.items():
        argv += ["--setenv", k, v]
    if user is None:
        return [*argv, "--", *cmd]
    uid, gid = user
    argv += ["--cap-add", "CAP_SETUID,CAP_SETGID", "--", shutil.which("setpriv") or "setpriv"]
    argv += [f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all"]
    return [*argv, "--bounding-set=-all", "--", *cmd]


def build(
    sandbox: Sandbox,
    spec: PipelineSpec,
    workdir: Path,
    input_names: list[str],
    batch: bool,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run the transform over `workdir/pfs`."""
    t = spec.transform
    pkg_root = str(Path(cowfs.__file__).resolve().parent.parent)
    inside = sandbox.kind != "direct"
    pfs = "/pfs" if inside else str(workdir / "pfs")
    ctl = CTL_INSIDE if inside else str(workdir / "ctl")
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp" if inside else str(workdir / "home"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONPATH": pkg_root,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PFS_OUT": f"{pfs}/out",
        "PFS": pfs,
        "COWFS_PIPELINE": spec.name,
    }
    # The GPUs this process may use, as Ray (or the operator) set them for it.
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    for name in input_names:
        env[env_name(name)] = f"{pfs}/{name}"
    if batch:
        env["COWFS_BATCH"] = "1"
        env["COWFS_DONE"] = f"{ctl}/done"
    if sandbox.kind in _ENGINES:
        env.pop("PYTHONPATH")
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.update(dict(t.env))
    cmd = list(t.cmd)
    if sandbox.kind == "direct":
        (workdir / "home").mkdir(exist_ok=True)
        return cmd, env
    if sandbox.kind == "bwrap":
        return bwrap_argv(workdir, env, cmd, sandbox.user), {"PATH": env["PATH"]}
    # podman / docker
    argv = [sandbox.kind, "run", "--rm", "-i", "--network", "none", "-w", "/pfs"]
    if sandbox.user is not None:
        argv += ["--user", f"{sandbox.user[0]}:{sandbox.user[1]}"]
    argv += ["-v", f"{workdir / 'pfs'}:/pfs:ro", "-v", f"{workdir / 'pfs' / 'out'}:/pfs/out"]
    argv += ["-v", f"{workdir / 'ctl'}:{CTL_INSIDE}"]
    res = spec.resources
    if res.cpu:
        argv += ["--cpus", str(res.cpu)]
    if res.memory:
        argv += ["--memory", str(res.memory)]
    if res.gpu:
        argv += ["--gpus", str(res.gpu)]
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    return [*argv, spec.transform.image or "", *cmd], dict(os.environ)
