"""leader_only: run a function only while this instance leads (the Go package's "always check
leadership before expensive operations", as a decorator)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, overload

__all__ = ["leader_only"]

logger = logging.getLogger("leaderelection")

P = ParamSpec("P")
R = TypeVar("R")
D = TypeVar("D")
D_co = TypeVar("D_co", covariant=True)


class Leadership(Protocol):
    """What ``leader_only`` reads: ``LeaderElection`` and ``leaderelection.sync.LeaderElection``
    both provide it."""

    @property
    def is_leader(self) -> bool:
        """Whether this instance leads now."""
        ...

    @property
    def fencing_token(self) -> int | None:
        """The current term's fencing token while leading, else None."""
        ...


class SkipUnlessLeader(Protocol[D_co]):
    """The decorator ``leader_only(election)`` returns: the signature stays, the result may be
    the default."""

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R | D_co]]: ...
    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R | D_co]: ...


class SkipUnlessLeaderWithToken(Protocol[D_co]):
    """The decorator ``leader_only(election, pass_token=...)`` returns: the token keyword is
    filled in, so the checked signature is loosened."""

    @overload
    def __call__(
        self, func: Callable[..., Coroutine[Any, Any, R]]
    ) -> Callable[..., Coroutine[Any, Any, R | D_co]]: ...
    @overload
    def __call__(self, func: Callable[..., R]) -> Callable[..., R | D_co]: ...


@overload
def leader_only(
    election: Leadership, *, pass_token: Literal[False] = False, default: None = None
) -> SkipUnlessLeader[None]: ...
@overload
def leader_only(
    election: Leadership, *, pass_token: Literal[False] = False, default: D
) -> SkipUnlessLeader[D]: ...
@overload
def leader_only(
    election: Leadership, *, pass_token: Literal[True] | str, default: None = None
) -> SkipUnlessLeaderWithToken[None]: ...
@overload
def leader_only(
    election: Leadership, *, pass_token: Literal[True] | str, default: D
) -> SkipUnlessLeaderWithToken[D]: ...
def leader_only(
    election: Leadership, *, pass_token: bool | str = False, default: Any = None
) -> Any:
    """Decorate a function or coroutine function so that it runs only while ``election`` leads.

    When this instance is not the leader at the moment of the call, the function is not called:
    the call returns ``default`` (awaitable for a coroutine function) and logs ``Skipped <name>:
    not the leader`` at DEBUG. Leadership is checked when the call starts; a term can still end
    while the function runs, which is what the fencing token is for: with ``pass_token`` the
    term's token is passed in, to hand to the store that must reject a stale leader's writes (see
    the recipes in ``docs/recipes.md``).

    Example::

        @leader_only(election)
        async def aggregate_metrics() -> None: ...

        @leader_only(election, pass_token=True)
        def write_report(report: Report, *, fencing_token: int) -> None:
            db.save(report, fencing_token=fencing_token)

    Args:
        election: A ``LeaderElection``, a ``leaderelection.sync.LeaderElection``, or anything with
            ``is_leader`` and ``fencing_token``.
        pass_token: ``True`` passes the token as the keyword argument ``fencing_token``; a string
            names the keyword argument instead.
        default: What a skipped call returns; default None.

    Raises:
        TypeError: ``pass_token`` is neither a bool nor a non-empty string.
    """
    if isinstance(pass_token, str):
        if not pass_token.isidentifier():
            raise TypeError(f"pass_token must name a keyword argument, got {pass_token!r}")
        keyword: str | None = pass_token
    elif isinstance(pass_token, bool):
        keyword = "fencing_token" if pass_token else None
    else:
        raise TypeError(f"pass_token must be a bool or a keyword name, got {pass_token!r}")

    def token_now(func: Callable[..., Any]) -> int | None:
        token = election.fencing_token if election.is_leader else None
        if token is None:
            name = getattr(func, "__qualname__", None) or repr(func)  # partials, instances
            logger.debug("Skipped %s: not the leader", name)
        return token

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if _is_coroutine_function(func):
            coroutine_function: Callable[..., Awaitable[Any]] = func

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                token = token_now(func)
                if token is None:
                    return default
                if keyword is not None:
                    kwargs[keyword] = token
                return await coroutine_function(*args, **kwargs)

            return run_async

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            token = token_now(func)
            if token is None:
                return default
            if keyword is not None:
                kwargs[keyword] = token
            return func(*args, **kwargs)

        return run

    return decorate


def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    """True for ``async def`` functions, partials of them, and objects with ``async __call__``."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - the method itself is what is checked
    return not inspect.isfunction(func) and inspect.iscoroutinefunction(call)
