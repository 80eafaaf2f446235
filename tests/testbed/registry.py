"""The real registry (distribution, the release its pod's image carries) started like its pod.

Why a tiny container instead of just running the binary: the Deployment the
program generates names paths *inside the container* (``/certs/tls.crt``,
``/var/lib/registry``), a user (``runAsUser``/``runAsGroup``/``fsGroup``)
and ``readOnlyRootFilesystem``; and the image brings a configuration file and an
environment of its own that the pod's environment only overrides.  To prove those
settings work we give the registry its own root, built under ``workdir``:

* a tmpfs root with ``/usr`` and ``/etc`` bound read-only from the machine
  and the merged-usr symlinks ``/bin /lib /lib64 /sbin``;
* the image's configuration file at the image's path (:class:`RegistryImage`: registry:3's
  ``/etc/distribution/config.yml`` with ``storage.delete.enabled: true`` and a debug server
  on :5001; registry:2's ``/etc/docker/registry/config.yml``), the image's ENV, and the
  registry binary of the image's release as ``registry`` on the image's PATH;
* the pod's volumes at their mount paths: Secret-like file sets mounted
  read-only (mode 0440, group = fsGroup, with Kubernetes' ``..data``
  symlinks), ``"pvc"`` / ``"emptydir"`` writable directories, and
  :class:`HostDir`, a directory that already holds data (an existing
  volume), mounted writable exactly as it is;
* ``/dev``, ``/proc`` and (optionally) a writable tmpfs ``/tmp``;
* the root remounted read-only when ``read_only_root`` is true.

Then ``chroot`` + ``setpriv`` run what the image's entrypoint runs for the container's
arguments (none: its CMD, ``registry serve <config>``) with the image's ENV, exactly the
pod's env and ``REGISTRY_HTTP_ADDR=<listen_ip>:<port>`` (forced, so it can only listen on
loopback). :func:`run_container` runs another container of the pod (an init container: the
garbage collector) in a root built the same way, to its end.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ._proc import mount_ns_id, require_free_port, stop_namespace, wait_for_tcp
from .certs import CertPair

# The official registry:2 image's /etc/docker/registry/config.yml (distribution-library-image 2.8).
REGISTRY_2_IMAGE_CONFIG = """\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""

# The official registry:3 image's /etc/distribution/config.yml: config-example.yml of
# distribution/distribution-library-image at the commit official-images' library/registry names
# for 3.1.1 (0c2328319a03), copied by its Dockerfile. It deletes, logs at debug level and opens a
# debug server with metrics unless the pod's environment says otherwise.
REGISTRY_3_IMAGE_CONFIG = """\
version: 0.1
log:
  level: debug
  fields:
    service: registry
    environment: development
storage:
    delete:
      enabled: true
    cache:
        blobdescriptor: inmemory
    filesystem:
        rootdirectory: /var/lib/registry
    tag:
      concurrencylimit: 5
http:
    addr: :5000
    debug:
        addr: :5001
        prometheus:
            enabled: true
            path: /metrics
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""

# ENV PATH of the registry images (Alpine base); a pod inherits it.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The images have their binary as /bin/registry, and a container's command finds it on the
# image's PATH as `registry`; the test bed puts the binary of the image's release under that
# name in /usr/local/bin of the container's root (first on IMAGE_PATH but for /usr/local/sbin).
IMAGE_REGISTRY_COMMAND = "registry"
IMAGE_BIN_DIR = "/usr/local/bin"
DEBIAN_REGISTRY_BINARY = Path("/usr/bin/docker-registry")
SECRET_MODE = 0o440  # what the program is expected to set as defaultMode


@dataclass(frozen=True)
class RegistryImage:
    """What a registry image is to the test bed: the registry binary of its release, its
    configuration file (path and content, from the image's Dockerfile) and its ENV."""

    release: str
    binary: Path
    config_path: str
    config: str
    env: Mapping[str, str] = field(default_factory=dict)

    def entrypoint(self, args: Sequence[str]) -> list[str]:
        """What the image's /entrypoint.sh (the same in registry:2 and registry:3) runs for a
        container's ``args``: none is the image's CMD, the config file; a config file is served;
        a subcommand goes to ``registry``; anything else runs as it is."""
        args = list(args) or [self.config_path]
        if args[0].endswith((".yaml", ".yml")):
            return [IMAGE_REGISTRY_COMMAND, "serve", *args]
        if args[0] in ("serve", "garbage-collect", "help") or args[0].startswith("-"):
            return [IMAGE_REGISTRY_COMMAND, *args]
        return args


# Debian's docker-registry is distribution 2.8.2: the test bed's stand-in binary for the
# registry:2.8.x images (the same storage layout and configuration as 2.8.3), used where a test
# needs the previous release (the guide's registry:2, an upgrade from registry:2.8.3).
REGISTRY_2_8 = RegistryImage("2.8", DEBIAN_REGISTRY_BINARY, "/etc/docker/registry/config.yml", REGISTRY_2_IMAGE_CONFIG)


def registry_3_image() -> RegistryImage:
    """The registry:3 image of the release toolchain/pins names, with that release's binary
    as scripts/toolchain built it."""
    from pulumi_real import pins, toolchain_dir

    return RegistryImage(
        pins()["registry"], toolchain_dir() / "registry", "/etc/distribution/config.yml", REGISTRY_3_IMAGE_CONFIG,
        # The image's Dockerfile: ENV OTEL_TRACES_EXPORTER=none.
        {"OTEL_TRACES_EXPORTER": "none"},
    )


def image_for(reference: str) -> RegistryImage:
    """The test bed's model of the registry image a pod names; an image it has no binary for
    fails, rather than run another release in its place."""
    tag = reference.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
    current = registry_3_image()
    if tag == current.release:
        return current
    if tag in ("2", "2.8") or tag.startswith("2.8."):
        return REGISTRY_2_8
    raise AssertionError(f"the test bed has no registry binary for image {reference!r} "
                         f"(it has {current.release}, toolchain/pins, and 2.8, Debian's)")


@dataclass(frozen=True)
class HostDir:
    """An existing directory mounted as it is: a volume that already holds data.

    Unlike ``"pvc"`` nothing is created, chowned or chmodded; what the kubelet would do to
    it for the pod's fsGroup is :func:`apply_fs_group`'s job, called by the test.
    """

    path: Path


Volume = Mapping[str, bytes] | Literal["pvc", "emptydir"] | HostDir


@dataclass
class RunningRegistry:
    """A started registry; stop it with :meth:`stop`."""

    listen_ip: str
    port: int
    scheme: str
    workdir: Path
    rootfs: Path
    volume_dirs: dict[str, Path]
    run_as_uid: int | None
    run_as_gid: int | None
    proc: subprocess.Popen[bytes] = field(repr=False)
    _ns_id: str | None = field(default=None, repr=False)
    init_logs: dict[str, str] = field(default_factory=dict)
    """What each init container of the pod printed before the registry started (by name)."""
    init_records: dict[str, Any] = field(default_factory=dict)
    """Each init container's record (tests/pod.py InitContainerRecord: restarts, previous log)."""

    @property
    def url(self) -> str:
        """Base URL by IP, e.g. ``https://127.0.0.202:5000``."""
        return f"{self.scheme}://{self.listen_ip}:{self.port}"

    @property
    def pid(self) -> int:
        """PID of the registry process (also the namespace owner)."""
        return self.proc.pid

    def log(self) -> str:
        """Everything the registry wrote to stdout/stderr so far."""
        try:
            return (self.workdir / "registry.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def volume_path(self, mount_path: str) -> Path:
        """Host directory backing the volume mounted at ``mount_path``."""
        return self.volume_dirs[mount_path]

    def run_inside(self, argv: list[str], *, as_root: bool = False) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in the container's root, as the registry's user by default.

        Why: lets a test show e.g. that the root really is read-only.
        """
        cmd = ["nsenter", f"--target={self.pid}", "--mount", "--root", "--wd", "--"]
        if not as_root:
            cmd += _setpriv(self.run_as_uid, self.run_as_gid, None)
        return subprocess.run(cmd + argv, check=False, capture_output=True, timeout=60)

    def stop(self) -> None:
        """Stop the registry; its mounts vanish with the namespace."""
        stop_namespace(self.proc, self._ns_id)


def start_registry(
    workdir: Path,
    *,
    listen_ip: str,
    port: int,
    env: Mapping[str, str],
    volumes: Mapping[str, Volume],
    run_as_uid: int | None = None,
    run_as_gid: int | None = None,
    fs_group: int | None = None,
    read_only_root: bool = False,
    writable_tmp: bool = True,
    timeout: float = 10.0,
    image: RegistryImage | None = None,
    args: Sequence[str] = (),
    hosts: Mapping[str, str] | None = None,
) -> RunningRegistry:
    """Start the registry as its pod would run, wait for its port, return it.

    ``image``: the registry image the pod runs (registry:3 of toolchain/pins by default);
    ``args``: the container's arguments, for the image's entrypoint. ``hosts``: names the
    container resolves (name -> loopback address), as a pod resolves docker.io through the
    cluster's DNS: its /etc/hosts.

    ``fs_group`` defaults to ``run_as_gid``: volumes get that group and the
    process gets it as a supplementary group, as Kubernetes does.  With
    ``writable_tmp=False`` there is no /tmp at all beyond the read-only root
    (that is what ``readOnlyRootFilesystem`` gives without an emptyDir).
    A "pvc" directory is kept under ``workdir`` and reused when the same
    workdir is started again (like a PersistentVolume across pod restarts).
    """
    if not listen_ip.startswith("127."):
        raise ValueError(f"the registry must listen on loopback, not {listen_ip}")
    require_free_port(listen_ip, port)
    workdir = workdir.resolve()
    image = image or registry_3_image()
    rootfs, volume_dirs, script = _container_root(
        workdir, "rootfs", image, volumes, run_as_uid, run_as_gid, fs_group, read_only_root, writable_tmp,
        image.entrypoint(args), hosts,
    )
    (workdir / "setup.sh").write_text(script)
    proc = _spawn(workdir, _container_env(image, env, listen_ip, port))
    reg = RunningRegistry(
        listen_ip=listen_ip,
        port=port,
        scheme="https" if env.get("REGISTRY_HTTP_TLS_CERTIFICATE") else "http",
        workdir=workdir,
        rootfs=rootfs,
        volume_dirs=volume_dirs,
        run_as_uid=run_as_uid,
        run_as_gid=run_as_gid,
        proc=proc,
    )
    try:
        wait_for_tcp(listen_ip, port, alive=lambda: proc.poll() is None, describe=reg.log, timeout=timeout)
        reg._ns_id = mount_ns_id(proc.pid)
    except BaseException as error:
        reg.stop()
        error.add_note(f"registry exit status: {proc.returncode}")
        raise
    return reg


def run_container(
    workdir: Path,
    *,
    argv: list[str],
    env: Mapping[str, str],
    volumes: Mapping[str, Volume],
    run_as_uid: int | None = None,
    run_as_gid: int | None = None,
    fs_group: int | None = None,
    read_only_root: bool = False,
    timeout: float = 300,
    image: RegistryImage | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one container of the registry's pod to its end (an init container: ``argv`` is its
    command and arguments), in a root built as :func:`start_registry` builds it, on the same
    ``workdir``'s volumes (a "pvc" is the one the registry then serves); output in ``stdout``.
    The image's ``registry`` command is on its PATH (IMAGE_REGISTRY_COMMAND)."""
    image = image or registry_3_image()
    _, _, script = _container_root(
        workdir.resolve(), "init-rootfs", image, volumes, run_as_uid, run_as_gid, fs_group, read_only_root, False,
        argv,
    )
    (workdir / "init.sh").write_text(script)
    container_env = {"PATH": IMAGE_PATH, "HOSTNAME": "registry", "HOME": "/root", **image.env, **env}
    return subprocess.run(
        ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", str(workdir / "init.sh")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=container_env,
        text=True, timeout=timeout, check=False, start_new_session=True,
    )


def _container_root(
    workdir: Path,
    rootfs_name: str,
    image: RegistryImage,
    volumes: Mapping[str, Volume],
    run_as_uid: int | None,
    run_as_gid: int | None,
    fs_group: int | None,
    read_only_root: bool,
    writable_tmp: bool,
    argv: list[str],
    hosts: Mapping[str, str] | None = None,
) -> tuple[Path, dict[str, Path], str]:
    """The container's root (under ``workdir/rootfs_name``), its volumes' host directories, and
    the script that builds the root and runs ``argv`` in it as the pod's user. The image's
    ``registry`` command (the binary of the image's release, bound there) is in its IMAGE_BIN_DIR."""
    workdir.mkdir(parents=True, exist_ok=True)
    group = fs_group if fs_group is not None else run_as_gid
    rootfs = _fresh_dir(workdir / rootfs_name, 0o755)
    # The image's files in /etc (its config.yml; the pod's /etc/hosts), over the machine's /etc.
    etc_upper = _fresh_dir(workdir / f"{rootfs_name}-etc", 0o755)
    config = etc_upper / image.config_path.removeprefix("/etc/")
    config.parent.mkdir(parents=True)
    config.write_text(image.config)
    if hosts:
        if any(not ip.startswith("127.") for ip in hosts.values()):
            raise ValueError(f"container names must resolve to loopback addresses: {hosts}")
        (etc_upper / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in hosts.items()))
    image_bin = _fresh_dir(workdir / f"{rootfs_name}-image-bin", 0o755)
    (image_bin / IMAGE_REGISTRY_COMMAND).touch(mode=0o755)
    volume_dirs = {path: _prepare_volume(workdir, path, spec, run_as_uid, group) for path, spec in volumes.items()}
    read_only = {path for path, spec in volumes.items() if isinstance(spec, Mapping)}
    script = _setup_script(rootfs, image, etc_upper, _fresh_dir(workdir / f"{rootfs_name}-etc-work", 0o755),
                           volume_dirs, read_only, read_only_root, writable_tmp, image_bin=image_bin)
    script += "exec chroot {} {} {}\n".format(
        shlex.quote(str(rootfs)),
        " ".join(shlex.quote(a) for a in _setpriv(run_as_uid, run_as_gid, group)),
        " ".join(shlex.quote(a) for a in argv),
    )
    return rootfs, volume_dirs, script


def _container_env(image: RegistryImage, pod_env: Mapping[str, str], listen_ip: str, port: int) -> dict[str, str]:
    """Image ENV + the pod's env verbatim + the forced loopback listen address."""
    env = {"PATH": IMAGE_PATH, "HOSTNAME": "registry", "HOME": "/root", **image.env}
    env.update(pod_env)
    # A debug server the image's config opens and the pod leaves as it is listens on the pod's
    # own address, here the loopback one it is given (3.x: one that cannot bind ends the registry).
    debug = (yaml.safe_load(image.config)["http"].get("debug") or {}).get("addr")
    if debug and "REGISTRY_HTTP_DEBUG_ADDR" not in pod_env:
        env["REGISTRY_HTTP_DEBUG_ADDR"] = f"{listen_ip}:{debug.rsplit(':', 1)[1]}"
    env["REGISTRY_HTTP_ADDR"] = f"{listen_ip}:{port}"
    return env


def _spawn(workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``unshare`` running the setup script, output to registry.log."""
    with open(workdir / "registry.log", "wb") as log:
        return subprocess.Popen(
            ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", str(workdir / "setup.sh")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _setpriv(uid: int | None, gid: int | None, groups: int | None) -> list[str]:
    """setpriv prefix dropping to the pod's user; empty when it runs as root."""
    if uid is None and gid is None:
        return []
    cmd = ["/usr/bin/setpriv", f"--reuid={uid or 0}", f"--regid={gid or 0}"]
    cmd += [f"--groups={groups}"] if groups is not None else ["--clear-groups"]
    return cmd


def _prepare_volume(workdir: Path, mount_path: str, spec: Volume, uid: int | None, gid: int | None) -> Path:
    """Create the host directory that will be mounted at ``mount_path``."""
    if not mount_path.startswith("/") or ".." in mount_path.split("/"):
        raise ValueError(f"bad mount path {mount_path!r}")
    if isinstance(spec, HostDir):
        if not spec.path.is_dir():
            raise ValueError(f"volume for {mount_path}: {spec.path} is not an existing directory")
        return spec.path.resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", mount_path.strip("/")) or "_root"
    if spec in ("pvc", "emptydir"):
        # Both outlive a container: a "pvc" the pod too, an "emptydir" only the pod (whose start
        # removes it: tests/pod.py start_registry_pod).
        base = workdir / ("pvc" if spec == "pvc" else "emptydir")
        path = base / slug
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid or 0, gid if gid is not None else 0)
        path.chmod(0o2775 if gid is not None else 0o755)
        return path
    if isinstance(spec, str):
        raise ValueError(f"unknown volume kind {spec!r} for {mount_path}")
    return _secret_dir(_fresh_dir(workdir / "secrets" / slug, 0o755), spec, gid)


# pkg/volume/volume_linux.go in kubernetes/kubernetes: rwMask, roMask, execMask.
_KUBELET_RW_MASK = 0o660
_KUBELET_RO_MASK = 0o440
_KUBELET_EXEC_MASK = 0o110


def apply_fs_group(path: Path, gid: int, *, change_policy: str | None = "OnRootMismatch", read_only: bool = False) -> bool:
    """Do to the volume at ``path`` what the kubelet does for a pod's ``fsGroup``; True if it changed it.

    A transcription of kubernetes/kubernetes pkg/volume/volume_linux.go (SetVolumeOwnership /
    VolumeOwnership.ChangePermissions), run by the kubelet when it sets up a pod's volume that
    supports ownership management (a block-backed PersistentVolume such as Longhorn's):

    * with ``fsGroupChangePolicy: OnRootMismatch`` nothing happens when the volume's root
      already has group ``gid``, at least rwx for owner and group (r-x with a read-only
      volume) and the setgid bit (``requiresPermissionChange``);
    * otherwise every entry, depth first, the root last (``walkDeep``), gets group ``gid``
      with its owner kept (``os.Lchown(path, -1, gid)``); symlinks stop there; every other
      entry gets its mode OR rw for owner and group (r for both when read-only), and a
      directory also x for owner and group and setgid (``changeFilePermission``).
    """
    path = Path(path)
    if change_policy == "OnRootMismatch" and not _requires_permission_change(path, gid, read_only):
        return False
    for root, dirs, files in os.walk(path, topdown=False):
        for name in [*files, *dirs]:
            _change_file_permission(Path(root) / name, gid, read_only)
    _change_file_permission(path, gid, read_only)
    return True


def _requires_permission_change(root: Path, gid: int, read_only: bool) -> bool:
    info = os.stat(root)
    if info.st_gid != gid or not stat.S_ISDIR(info.st_mode):
        return True
    wanted = (_KUBELET_RO_MASK if read_only else _KUBELET_RW_MASK) | _KUBELET_EXEC_MASK
    return (stat.S_IMODE(info.st_mode) & wanted) != wanted or not info.st_mode & stat.S_ISGID


def _change_file_permission(path: Path, gid: int, read_only: bool) -> None:
    info = os.lstat(path)
    os.lchown(path, -1, gid)
    if stat.S_ISLNK(info.st_mode):
        return
    mask = _KUBELET_RO_MASK if read_only else _KUBELET_RW_MASK
    if stat.S_ISDIR(info.st_mode):
        mask |= stat.S_ISGID | _KUBELET_EXEC_MASK
    os.chmod(path, stat.S_IMODE(info.st_mode) | mask)


def _secret_dir(path: Path, files: Mapping[str, bytes], gid: int | None) -> Path:
    """Lay out files the way the kubelet does for a Secret volume.

    Real files live in a timestamped dir, ``..data`` points at it, and each
    key is a symlink through ``..data``; programs that check regular-file
    types or rely on rename tricks meet the same layout as in the cluster.
    """
    stamp = path / "..2025_01_01_00_00_00.000000000"
    stamp.mkdir(mode=0o755)
    for name, data in files.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"unsupported secret key {name!r}")
        target = stamp / name
        target.write_bytes(data)
        os.chown(target, 0, gid if gid is not None else 0)
        target.chmod(SECRET_MODE)
        (path / name).symlink_to(f"..data/{name}")
    (path / "..data").symlink_to(stamp.name)
    return path


def _setup_script(
    rootfs: Path,
    image: RegistryImage,
    etc_upper: Path,
    etc_work: Path,
    volume_dirs: Mapping[str, Path],
    read_only: set[str],
    read_only_root: bool,
    writable_tmp: bool,
    image_bin: Path,
) -> str:
    """Shell that builds the container root inside the new mount namespace (``image_bin``: what
    the image has in IMAGE_BIN_DIR; its ``registry`` is the image's binary, bound over it)."""
    r = shlex.quote(str(rootfs))
    lines = [
        "set -eu",
        f"mount -t tmpfs -o mode=755 tmpfs {r}",
        f"cd {r}",
        "mkdir usr etc dev proc tmp var var/lib root",
        "chmod 1777 tmp",
        "ln -s usr/bin bin && ln -s usr/lib lib && ln -s usr/lib64 lib64 && ln -s usr/sbin sbin",
        *_bind(Path("/usr"), f"{r}/usr", read_only=True),
        # The machine's /etc with the image's files over it (overlayfs), then read-only.
        (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={shlex.quote(str(etc_upper))},"
         f"workdir={shlex.quote(str(etc_work))} {r}/etc"),
        f"mount -o remount,ro {r}/etc",
        *_bind(image_bin, f"{r}{IMAGE_BIN_DIR}", read_only=True),
        *_bind(image.binary, f"{r}{IMAGE_BIN_DIR}/{IMAGE_REGISTRY_COMMAND}", read_only=True),
        f"mount --rbind /dev {r}/dev",
        f"mount -t proc proc {r}/proc",
    ]
    if writable_tmp:
        lines.append(f"mount -t tmpfs -o mode=1777 tmpfs {r}/tmp")
    for mount_path, host_dir in volume_dirs.items():
        target = f"{r}{shlex.quote(mount_path)}"
        lines.append(f"[ -d {target} ] || mkdir -p {target}")
        lines += _bind(host_dir, target, read_only=mount_path in read_only)
    if read_only_root:
        lines.append(f"mount -o remount,ro {r}")
    return "\n".join(lines) + "\n"


def _bind(src: Path, target: str, *, read_only: bool) -> list[str]:
    """Commands for a (read-only) bind mount of ``src`` onto ``target``."""
    lines = [f"mount --bind {shlex.quote(str(src))} {target}"]
    if read_only:
        lines.append(f"mount -o remount,bind,ro {target}")
    return lines


def _fresh_dir(path: Path, mode: int) -> Path:
    """(Re)create an empty directory with ``mode``."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    path.chmod(mode)
    return path


# ----------------------------------------------------------------------------- a stand-in upstream

UPSTREAM_PORT = 5000
UPSTREAM_CA_DIR = "/testbed-upstream-ca"
"""Where a cache under test finds the stand-in upstream's CA (a read-only mount the test adds)."""


def start_upstream(workdir: Path, ip: str, cert: CertPair, env: Mapping[str, str] | None = None) -> RunningRegistry:
    """A stand-in upstream (docker.io, quay.io…) for the caches: a registry on ``ip`` serving TLS
    with ``cert`` (its own self-signed certificate and key); ``env`` adds its auth, if any."""
    return start_registry(
        workdir, listen_ip=ip, port=UPSTREAM_PORT,
        env={"REGISTRY_HTTP_TLS_CERTIFICATE": "/certs/tls.crt", "REGISTRY_HTTP_TLS_KEY": "/certs/tls.key", **(env or {})},
        volumes={"/certs": {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem}, "/var/lib/registry": "pvc"},
    )


def pointed_at_upstream(ip: str, ca_pem: bytes, names: Sequence[str] = ()) -> dict[str, Any]:
    """What a test changes in a cache's declared pod to use the stand-in upstream: its URL and a
    CA bundle with its CA (``start_registry_pod``'s ``env_overrides`` and ``extra_files``).
    ``names``: host names of the stand-in (the first is the URL's), resolved to ``ip`` in the
    container, as docker.io's are by the cluster's DNS."""
    return {
        "env_overrides": {"REGISTRY_PROXY_REMOTEURL": f"https://{names[0] if names else ip}:{UPSTREAM_PORT}",
                          "SSL_CERT_FILE": f"{UPSTREAM_CA_DIR}/ca.crt"},
        "extra_files": {UPSTREAM_CA_DIR: {"ca.crt": ca_pem}},
        **({"hosts": dict.fromkeys(names, ip)} if names else {}),
    }
