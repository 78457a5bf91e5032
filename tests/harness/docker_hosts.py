"""Test hosts with Docker engines of their own: network namespaces on this machine.

Each :class:`DockerTestHost` is a network namespace joined to this machine by a veth pair on a
``/30`` of ``10.213.0.0/16`` that the harness made (this machine ``10.213.N.1``, the host
``10.213.N.2``; nothing else is on that link; the rest of ``10.213.0.0/16`` is routed through
this machine, so that a host reaches this machine's address on another host's link, where a
test master may listen), with a real ``dockerd`` in it listening on
``tcp://10.213.N.2:2376`` with TLS client verification, its own data root, exec root, pid
file and containerd, ``--bridge=none`` and no iptables. The CA and the server and client
certificates are made here with the ``openssl`` CLI. Images come from the tests' main engine
by ``docker save`` then ``docker load`` into each host: never from a registry.

dockerd is entered into the namespace with ``nsenter --net`` rather than ``ip netns exec``:
the latter also remounts ``/sys`` in a mount namespace of its own, which hides the cgroup
hierarchies under ``/sys/fs/cgroup`` and makes dockerd exit with "Devices cgroup isn't mounted".

A host is claimed by creating its namespace (``farm-host-N``): ``ip netns add`` fails when
the name exists, so two test runs on one machine never share a subnet. :meth:`DockerTestHosts.stop`
kills every process in each namespace (dockerd, its containerd, shims and host-network
containers), unmounts what they left under the state directory, removes it, the namespace
and the veth pair.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests
from docker.constants import MINIMUM_DOCKER_API_VERSION
from docker.errors import DockerException

from buildbot_farm.docker_engines import TLSFiles, engine_api

ENGINE_PORT = 2376
START_TIMEOUT = 60.0
SUBNETS = range(1, 255)
INSTALL_HINT = (
    "run the tests as root; `sudo tests/harness/install-system-packages.sh` installs iproute2,"
    " nsenter (util-linux), openssl, iptables and docker.io"
)


class HostsUnavailable(RuntimeError):
    """The test hosts cannot be made here; the message says which capability is missing."""


@dataclass
class DockerTestHost:
    """One test host: a network namespace with its own address and Docker engine."""

    index: int
    state_dir: Path
    tls: TLSFiles
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The namespace's name, also the host's name in the tests."""
        return f"farm-host-{self.index}"

    @property
    def address(self) -> str:
        """The host's own address (its end of the veth pair)."""
        return f"10.213.{self.index}.2"

    @property
    def gateway(self) -> str:
        """This machine's address on the host's link."""
        return f"10.213.{self.index}.1"

    @property
    def url(self) -> str:
        """The engine's URL (TLS on TCP)."""
        return f"tcp://{self.address}:{ENGINE_PORT}"

    @property
    def veth(self) -> str:
        """This machine's end of the veth pair."""
        return f"fh{self.index}h"

    def client(self, timeout: float = 60.0) -> docker.DockerClient:
        """A new client of the host's engine; the caller closes it."""
        client = docker.DockerClient(base_url=self.url, version=MINIMUM_DOCKER_API_VERSION)
        client.api.close()
        client.api = engine_api(self.url, self.tls, timeout)
        return client

    def answers(self) -> bool:
        """Whether the engine answers a ping within two seconds."""
        try:
            client = self.client(timeout=2.0)
        except (DockerException, requests.RequestException):
            return False
        try:
            return bool(client.ping())
        except (DockerException, requests.RequestException):
            return False
        finally:
            client.close()

    def kill_engine(self) -> None:
        """``kill -9`` the host's dockerd (its containerd and containers stay, as on a host
        whose engine crashed)."""
        assert self.process is not None, f"{self.name}: no dockerd to kill"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def set_link(self, up: bool) -> None:
        """Take the host's end of its link down (it drops off the network) or up again (with
        its route to the other hosts' links, which the link's going down removed)."""
        inner = f"fh{self.index}n"
        _run("ip", "netns", "exec", self.name, "ip", "link", "set", inner, "up" if up else "down")
        if up:
            _run(*self.route_command())

    def block_agents(self, blocked: bool) -> None:
        """Have the host refuse (drop) every new TCP connection but its engine's, as a
        firewall closing the agents' ports would, or take that rule away again."""
        rule = ("INPUT", "-p", "tcp", "--syn", "!", "--dport", str(ENGINE_PORT), "-j", "DROP")
        _run("nsenter", f"--net=/run/netns/{self.name}", "iptables",
             "-A" if blocked else "-D", *rule)

    def route_command(self) -> tuple[str, ...]:
        """The command that routes the rest of ``10.213.0.0/16`` through this machine."""
        return ("ip", "netns", "exec", self.name, "ip", "route", "replace", "10.213.0.0/16",
                "via", self.gateway)

    def restart_engine(self) -> None:
        """Bring the host back after :meth:`kill_engine`, as a reboot would: every process
        left in it (containerd, shims, containers) is killed, then dockerd starts on the
        same data root; the containers it had are still on record."""
        assert self.process is not None, f"{self.name}: dockerd was never started"
        assert self.process.poll() is not None, f"{self.name}: dockerd still runs"
        _kill_all(self)
        _start_engine(self)
        _wait_engine(self)

    def pids(self) -> list[int]:
        """Every process in the host's namespace (all started by this harness)."""
        listed = _run("ip", "netns", "pids", self.name, check=False).stdout
        return [int(pid) for pid in listed.split()]

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the host's dockerd log."""
        log = self.state_dir / "dockerd.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class DockerTestHosts:
    """Makes, hands out and tears down :class:`DockerTestHost` objects.

    ``startup_seconds`` is what :meth:`start` took (namespaces, engines and image loads).
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="farm-hosts-"))
        self.hosts: list[DockerTestHost] = []
        self.tls: TLSFiles | None = None
        self.startup_seconds = 0.0

    def start(self, count: int, images: list[str], source_socket: Path) -> list[DockerTestHost]:
        """Make ``count`` hosts, each with ``images`` loaded from the engine at
        ``source_socket``; HostsUnavailable says what is missing."""
        began = time.monotonic()
        _check_capabilities()
        self.tls = _make_client_tls(self.root / "tls")
        for _ in range(count):
            self.hosts.append(self._claim())
        for host in self.hosts:
            _issue_server_cert(self.root / "tls", host)
            _start_engine(host)
        for host in self.hosts:
            _wait_engine(host)
        self._load_images(images, source_socket)
        self.startup_seconds = time.monotonic() - began
        return self.hosts

    def stop(self) -> None:
        """Tear everything down: processes, mounts, directories, namespaces and veths."""
        for host in self.hosts:
            _kill_all(host)
            _unmount_under(host.state_dir)
            _run("ip", "netns", "del", host.name, check=False)
            _run("ip", "link", "del", host.veth, check=False)
        self.hosts = []
        shutil.rmtree(self.root, ignore_errors=True)

    def _claim(self) -> DockerTestHost:
        taken = {host.index for host in self.hosts}
        for index in random.sample(list(SUBNETS), len(SUBNETS)):
            if index in taken or f"10.213.{index}." in _run("ip", "-4", "-o", "addr").stdout:
                continue
            if _run("ip", "netns", "add", f"farm-host-{index}", check=False).returncode:
                continue  # another run holds it
            assert self.tls is not None
            host = DockerTestHost(index, self.root / f"host-{index}", self.tls)
            host.state_dir.mkdir()
            self._link(host)
            return host
        raise HostsUnavailable("no free 10.213.N.0/30 subnet for a test host")

    def _link(self, host: DockerTestHost) -> None:
        inner = f"fh{host.index}n"
        in_ns = ("ip", "netns", "exec", host.name)
        for command in (
            ("ip", "link", "add", host.veth, "type", "veth", "peer", "name", inner),
            ("ip", "link", "set", inner, "netns", host.name),
            ("ip", "addr", "add", f"{host.gateway}/30", "dev", host.veth),
            ("ip", "link", "set", host.veth, "up"),
            (*in_ns, "ip", "addr", "add", f"{host.address}/30", "dev", inner),
            (*in_ns, "ip", "link", "set", inner, "up"),
            (*in_ns, "ip", "link", "set", "lo", "up"),
            host.route_command(),
        ):
            _run(*command)

    def _load_images(self, images: list[str], source_socket: Path) -> None:
        archive = self.root / "images.tar"
        _run("docker", "-H", f"unix://{source_socket}", "save", "-o", str(archive), *images)
        try:
            with ThreadPoolExecutor(len(self.hosts)) as pool:
                list(pool.map(lambda host: _load(host, archive), self.hosts))
        finally:
            archive.unlink()


def _start_engine(host: DockerTestHost) -> None:
    tls_dir = Path(host.tls.ca).parent
    directory = host.state_dir
    command = [
        "nsenter", f"--net=/run/netns/{host.name}", "dockerd",
        f"--data-root={directory / 'data'}", f"--exec-root={directory / 'exec'}",
        f"--pidfile={directory / 'docker.pid'}",
        f"--host={host.url}", f"--host=unix://{directory / 'docker.sock'}",
        "--tlsverify", f"--tlscacert={tls_dir / 'ca.pem'}",
        f"--tlscert={tls_dir / f'{host.name}.pem'}",
        f"--tlskey={tls_dir / f'{host.name}.key'}",
        "--bridge=none", "--iptables=false", "--ip6tables=false",
    ]
    with (directory / "dockerd.log").open("ab") as log:
        host.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_engine(host: DockerTestHost) -> None:
    assert host.process is not None
    deadline = time.monotonic() + START_TIMEOUT
    while not host.answers():
        if host.process.poll() is not None:
            raise HostsUnavailable(
                f"dockerd of {host.name} exited with status {host.process.returncode};"
                f" its log ends:\n{host.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise HostsUnavailable(
                f"dockerd of {host.name} did not answer on {host.url} within"
                f" {START_TIMEOUT:.0f} s; its log ends:\n{host.log_tail()}"
            )
        time.sleep(0.1)


def _load(host: DockerTestHost, archive: Path) -> None:
    tls = host.tls
    _run(
        "docker", "--tlsverify", f"--tlscacert={tls.ca}", f"--tlscert={tls.cert}",
        f"--tlskey={tls.key}", "-H", host.url, "load", "-q", "-i", str(archive),
    )


def _check_capabilities() -> None:
    if os.geteuid() != 0:
        raise HostsUnavailable(f"making network namespaces and engines needs root: {INSTALL_HINT}")
    for tool in ("ip", "nsenter", "openssl", "iptables", "dockerd", "docker"):
        if shutil.which(tool) is None:
            raise HostsUnavailable(f"{tool} is not installed: {INSTALL_HINT}")


def _make_client_tls(directory: Path) -> TLSFiles:
    directory.mkdir()
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=farm test hosts CA", "-keyout", str(ca_key), "-out", str(ca))
    _sign(directory, "client", "extendedKeyUsage=clientAuth\n")
    return TLSFiles(
        ca=str(ca), cert=str(directory / "client.pem"), key=str(directory / "client.key")
    )


def _issue_server_cert(directory: Path, host: DockerTestHost) -> None:
    _sign(directory, host.name, f"subjectAltName=IP:{host.address}\nextendedKeyUsage=serverAuth\n")


def _sign(directory: Path, name: str, extensions: str) -> None:
    key, request, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(request))
    _openssl("x509", "-req", "-in", str(request), "-CA", str(directory / "ca.pem"),
             "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-days", "2",
             "-extfile", str(directory / f"{name}.ext"), "-out", str(cert))


def _openssl(*arguments: str) -> None:
    _run("openssl", *arguments)


def _kill_all(host: DockerTestHost) -> None:
    """SIGKILL every process in the host's namespace, then wait until none is left."""
    deadline = time.monotonic() + 10.0
    while (pids := host.pids()) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    if host.process is not None:
        host.process.wait()


def _unmount_under(directory: Path) -> None:
    """Unmount (lazily) every mount point under ``directory``, deepest first."""
    prefix = f"{directory}/"
    with open("/proc/self/mounts") as table:
        points = [line.split()[1] for line in table if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        _run("umount", "-l", point, check=False)


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise HostsUnavailable(
            f"`{' '.join(command)}` failed with status {done.returncode}: {done.stderr.strip()}"
        )
    return done
