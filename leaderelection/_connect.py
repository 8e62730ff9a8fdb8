"""Redis deployments by URL: one server, a Redis Cluster found from any node, or Sentinel.

A URL names a deployment, and the client it needs is not always known from the text:

* ``redis://`` / ``rediss://`` / ``unix://``: one server, or any node of a Redis Cluster. The
  first use asks the node (``INFO cluster``); a node in cluster mode gets a ``RedisCluster``
  client, which follows slot moves and failovers, so any node's URL works.
* ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`` and
  ``rediss+sentinel://``: the master of ``service_name`` as the sentinels name it, found again
  after a failover (redis-py's ``Sentinel.master_for``). The user and password are the data
  nodes'; the sentinels' own are the query options ``sentinel_username`` and
  ``sentinel_password``. Other query options (``ssl_ca_certs``, ``socket_timeout``, ...) are
  redis-py's URL options and apply to the data nodes and the sentinels alike.

:class:`UrlClient` holds a URL, checks it at once (:class:`ConfigurationError` for one that
cannot work), and makes the client on first use, again after a failed attempt: a deployment that
is down when the election starts is found when it comes back.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, Final

import redis.asyncio
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel

from ._aio import close_client
from ._exceptions import ConfigurationError

__all__ = ["URL_FORMS", "UrlClient", "check_url", "is_cluster", "redact", "resolve_client"]

_SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
_PLAIN_SCHEMES: Final = ("redis", "rediss", "unix")
URL_FORMS: Final = (
    "redis://[[user]:password@]host[:port][/db], rediss://..., unix:///path/to/socket, or "
    "redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db] "
    "(rediss+sentinel:// for TLS)"
)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client (it routes by slot)."""
    return callable(getattr(client, "get_node_from_key", None)) and hasattr(client, "nodes_manager")


class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL."""

    __slots__ = ("options", "sentinel_options", "sentinels", "service")

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        tls = scheme == "rediss+sentinel"
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        self.sentinels = [_address(item, url) for item in hostlist.split(",")]
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise _bad(url, "name the service: redis+sentinel://host:port/service_name[/db]")
        self.service = urllib.parse.unquote(path[0])
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        sentinel_auth = {
            key.removeprefix("sentinel_"): values[-1]
            for key in ("sentinel_username", "sentinel_password")
            if (values := query.pop(key, None))
        }
        # The remaining options are redis-py's URL options: let redis-py read and type them.
        plain = urllib.parse.urlunsplit(
            (
                "rediss" if tls else "redis",
                f"{userinfo}@placeholder" if userinfo else "placeholder",
                "/" + (path[1] if len(path) == 2 else "0"),
                urllib.parse.urlencode(query, doseq=True),
                "",
            )
        )
        try:
            options: dict[str, Any] = dict(parse_url(plain))
        except ValueError as exc:
            raise _bad(url, str(exc)) from exc
        for key in ("host", "port", "path", "connection_class"):
            options.pop(key, None)
        if tls:
            options["ssl"] = True
        self.options = options
        shared = {k: v for k, v in options.items() if k.startswith(("ssl", "socket_"))}
        self.sentinel_options = {**shared, **sentinel_auth}

    def describe(self) -> str:
        """The sentinels, for messages."""
        return ", ".join(f"{host}:{port}" for host, port in self.sentinels)


def _address(item: str, url: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(url, f"each sentinel needs host:port, got {item!r}")
    return host.strip("[]"), int(port)


def _bad(url: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"cannot use Redis URL {redact(url)!r}: {why}. Expected {URL_FORMS}")


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _PLAIN_SCHEMES + _SENTINEL_SCHEMES:
        raise _bad(url, f"unknown scheme {scheme!r}" if scheme else "no scheme")
    return scheme


def check_url(url: str) -> None:
    """Check that ``url`` can work, without connecting.

    Raises:
        ConfigurationError: it cannot; the message says why and shows the accepted forms.
    """
    UrlClient(url, 1.0)  # makes no connection


class UrlClient:
    """The client of a URL, made on first use (see the module's docstring).

    Args:
        url: The deployment's URL.
        call_timeout: Bounds every connect (the election's per-call deadline).

    Raises:
        ConfigurationError: the URL cannot work (unknown scheme, no service name, bad option).
    """

    def __init__(self, url: str, call_timeout: float) -> None:
        self.url = url
        self._options: dict[str, Any] = {
            "socket_connect_timeout": max(call_timeout, 0.1),
            "health_check_interval": 0,
        }
        scheme = _scheme(url)
        if scheme != "unix":
            self._options["socket_keepalive"] = True  # TCP only: a Unix socket refuses it
        self.sentinel = SentinelTarget(url) if scheme in _SENTINEL_SCHEMES else None
        self._plain: Any = None
        self._client: Any = None
        self._sentinels: list[Any] = []
        self._manager: Any = None
        try:  # redis-py checks the options now; the connections are made on first use
            if self.sentinel is None:
                self._plain = redis.asyncio.Redis.from_url(url, **self._options)
            else:
                target = self.sentinel
                # The URL's options win over the defaults, as with redis-py's from_url.
                self._manager = Sentinel(
                    target.sentinels,
                    sentinel_kwargs={**self._options, **target.sentinel_options},
                    **{**self._options, **target.options},
                )
        except (ValueError, TypeError) as exc:
            raise _bad(url, str(exc)) from exc
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def kind(self) -> str:
        """``"sentinel"``, ``"cluster"``, ``"standalone"``, or ``"unknown"`` before first use."""
        if self.sentinel is not None:
            return "sentinel"
        if self._client is None:
            return "unknown"
        return "cluster" if is_cluster(self._client) else "standalone"

    @property
    def resolved(self) -> Any:
        """The client, or None before the first successful use."""
        return self._client

    async def resolve(self) -> Any:
        """The client: made (and, for a plain URL, cluster mode detected) on first use.

        Raises:
            redis.exceptions.RedisError, OSError: the node could not be asked; the next call
                tries again.
        """
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                if self._closed:
                    raise rx.ConnectionError("the election's Redis client is closed")
                client = await self._make()
                if self._closed:  # closed while connecting: nobody will close this one
                    await close_client(client)
                    raise rx.ConnectionError("the election's Redis client is closed")
                self._client = client
        return self._client

    async def _make(self) -> Any:
        if self._manager is not None:
            assert self.sentinel is not None
            self._sentinels = list(self._manager.sentinels)
            return self._manager.master_for(self.sentinel.service)
        if not await self._in_cluster_mode():
            return self._plain
        cluster = RedisCluster.from_url(self.url, **self._options)
        try:
            await cluster.initialize()
        except BaseException:
            await close_client(cluster)
            raise
        # The node's plain client (one idle connection) is closed with this one, in aclose():
        # closing it here could be cut by the call's deadline after the cluster client was
        # made, and lose both.
        return cluster

    async def _in_cluster_mode(self) -> bool:
        """Ask the node; a node that refuses INFO (an ACL, a renamed command) is taken for a
        single server, and a cluster's MOVED reply then says what to pass instead."""
        plain = self._plain
        if plain is None:
            raise rx.ConnectionError("the election's Redis client is closed")
        try:
            info = await plain.info("cluster")
        except rx.ResponseError as exc:
            if "cluster mode" in str(exc):  # the URL's /db: a cluster node refuses SELECT
                raise _bad(self.url, "a Redis Cluster has only database 0: remove the /db") from exc
            return False
        return bool(int(info.get("cluster_enabled", 0)))

    async def aclose(self) -> None:
        """Close whatever was made; idempotent."""
        self._closed = True
        client, self._client = self._client, None
        plain, self._plain = self._plain, None
        sentinels, self._sentinels = self._sentinels, []
        manager, self._manager = self._manager, None
        if manager is not None and not sentinels:  # never used: its sentinel clients are idle
            sentinels = list(manager.sentinels)
        if plain is client:
            plain = None
        for each in (client, plain, *sentinels):
            if each is not None:
                await close_client(each)


async def resolve_client(client: Any) -> Any:
    """``client`` itself, or the client a :class:`UrlClient` stands for."""
    return await client.resolve() if isinstance(client, UrlClient) else client
