"""The history checker: reads a chaos run's files and reports safety and liveness.

Inputs (in one directory): ``agent-*.jsonl`` (one per candidate process, see
:mod:`tests.chaos.agent`), ``faults.jsonl`` (the runner's schedule: each fault with its
``inject`` and ``heal`` times) and ``resource.jsonl`` (the fenced resource: every write Redis
applied through a :class:`~leaderelection.Fence`, in the order it applied them: token, writer,
sequence number, send time). The writes refused come from the histories (``write`` events with
``ok`` false).

Properties, per fault type and in total:

* **S1** overlapping leadership: the ``is_leader`` interval of a term runs from its ``acquired``
  event to the earliest of its ``lost`` event, its last local lease deadline (``until``: after it
  ``is_leader`` reads False whatever the event loop is doing), and the process's death. Two
  intervals of different processes must not overlap. Fenced writes: in the order Redis applied
  them, a write must never carry a token lower than one applied before it (``fenced``).
* **S2** fencing tokens strictly increase from term to term (terms ordered by start), and no
  stale write is applied: a write sent after a term with a higher token had begun (its
  ``acquired`` event, which follows its grant at Redis) must be refused (``stale applied``, must
  be 0). The writes refused are counted (``stale refused``), and among them those refused by
  Redis itself, past the fence's local check (``at redis``).
* **S3** callbacks: per process, each term runs ``become`` (start, end), then its
  ``while_leader`` task ends, then exactly one ``lose`` (start, end); the numbers of becomes and
  loses match the terms acquired and lost. A killed process may stop anywhere in that sequence.
* **L1** failover: for each fault, the time from its healing to the start of the first term that
  the fault did not end (zero when such a term was already running at the heal), against
  ``lock_ttl + retry_interval + epsilon``; for a restart of the lease server, against the restart
  protection (``ceil(lock_ttl) + 1 s`` of uptime, read in whole seconds, so up to 1 s more) plus
  ``retry_interval + epsilon``.
* **L2** step-downs without a fault: a term lost (``renew_deadline`` or ``lock_lost``) outside
  every fault's window, from its injection to ``lock_ttl + retry_interval + 1 s`` after its heal.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.runner import RESTARTS

EPSILON = 0.25  # seconds of slack on the failover bound: scheduling on a loaded 2-core machine


@dataclass
class Term:
    instance: str
    token: int
    start: float
    end: float
    reason: str  # renew_deadline, lock_lost, resigned, stopped, killed, running


@dataclass
class Row:
    """The figures of one fault type (or of all)."""

    injected: int = 0
    overlaps: int = 0
    max_overlap: float = 0.0
    fenced_overlaps: int = 0
    token_regressions: int = 0
    stale_applied: int = 0
    stale_rejected: int = 0
    rejected_at_redis: int = 0
    rejected_locally: int = 0
    unbalanced: int = 0
    step_downs: int = 0
    leaderless: list[float] = field(default_factory=list)
    over_bound: int = 0
    no_leader: int = 0


@dataclass
class Report:
    rows: dict[str, Row]
    total: Row
    unexplained_step_downs: list[dict[str, Any]]
    problems: list[str]
    terms: int
    writes_accepted: int
    writes_rejected: int
    ttl: float
    retry: float
    duration: float

    @property
    def safe(self) -> bool:
        """S1, S2 and S3 hold, and nothing stepped down without a fault (L2)."""
        t = self.total
        return (
            t.overlaps == 0
            and t.fenced_overlaps == 0
            and t.stale_applied == 0
            and t.token_regressions == 0
            and t.unbalanced == 0
            and not self.unexplained_step_downs
            and not self.problems
        )


def _load(path: Path) -> list[dict[str, Any]]:
    events = []
    with open(path) as f:
        for line in f:
            if line.strip():
                events.append(json.loads(line))
    return events


def failover_bound(fault: str, ttl: float, retry: float) -> float:
    """The L1 target for one fault type, in seconds after the heal."""
    if fault in RESTARTS:
        # The protection needs ceil(ttl) + 1 s of uptime, which INFO reports in whole seconds:
        # the wait it asks for can end up to one second after that.
        return math.ceil(ttl) + 2 + retry + EPSILON
    return ttl + retry + EPSILON


def bound_after(
    fault: dict[str, Any], faults: list[dict[str, Any]], ttl: float, retry: float
) -> float:
    """The L1 target of one injected fault: its type's, or longer if the lease server restarted
    shortly before and its restart protection still held free locks back at the heal."""
    bound = failover_bound(fault["fault"], ttl, retry)
    for f in faults:
        if f["fault"] in RESTARTS and f["heal"] <= fault["heal"]:
            protected = f["heal"] + failover_bound(f["fault"], ttl, retry) - fault["heal"]
            bound = max(bound, protected)
    return bound


def check(directory: Path) -> Report:
    """Read a chaos run's files from ``directory`` and check them."""
    schedule = _load(directory / "faults.jsonl")
    meta = next(r["meta"] for r in schedule if "meta" in r)
    ttl, retry = float(meta["ttl"]), float(meta["retry"])
    faults = [r for r in schedule if "fault" in r]
    started = next((r["started"] for r in schedule if "started" in r), 0.0)
    finished = next((r["finished"] for r in schedule if "finished" in r), math.inf)
    killed_at = {r["target"]: r["inject"] for r in faults if r["fault"] == "kill_leader"}
    histories = {
        path.name.removeprefix("agent-").removesuffix(".jsonl"): _load(path)
        for path in sorted(directory.glob("agent-*.jsonl"))
    }
    rows: dict[str, Row] = {name: Row() for name in meta["types"]}
    total = Row()
    problems: list[str] = []

    def fault_at(t: float) -> str:
        """The fault type in force at ``t``: the last one injected at or before it."""
        current = "none"
        for f in faults:
            if f["inject"] <= t:
                current = f["fault"]
        return current

    def bump(fault: str, attribute: str, amount: float = 1) -> None:
        for row in (rows.setdefault(fault, Row()), total):
            setattr(row, attribute, getattr(row, attribute) + amount)

    # -- terms (S1, S2) and callbacks (S3) ------------------------------------------------
    terms: list[Term] = []
    for instance, events in histories.items():
        death = killed_at.get(instance, math.inf)
        open_term: dict[str, Any] | None = None
        for e in events:
            if e["e"] == "acquired":
                if open_term is not None:
                    problems.append(f"{instance}: a term started while one was open at {e['t']}")
                open_term = {"token": e["token"], "start": e["t"], "until": e["until"]}
            elif e["e"] == "lease" and open_term is not None:
                open_term["until"] = max(open_term["until"], e["until"])
            elif e["e"] == "lost":
                if open_term is None or open_term["token"] != e["token"]:
                    problems.append(f"{instance}: lost a term it did not hold at {e['t']}")
                    continue
                end = min(e["t"], open_term["until"], death)
                terms.append(Term(instance, e["token"], open_term["start"], end, e["reason"]))
                open_term = None
        if open_term is not None:
            reason = "killed" if death < math.inf else "running"
            end = min(open_term["until"], death)
            terms.append(Term(instance, open_term["token"], open_term["start"], end, reason))
        unbalanced = _check_callbacks(events, killed=death < math.inf)
        for t, message in unbalanced:
            problems.append(f"{instance}: {message}")
            bump(fault_at(t), "unbalanced")

    terms.sort(key=lambda term: term.start)
    for i, a in enumerate(terms):
        for b in terms[i + 1 :]:
            if b.start >= a.end:
                continue
            if a.instance == b.instance:
                continue
            overlap = min(a.end, b.end) - b.start
            if overlap > 0:
                fault = fault_at(b.start)
                bump(fault, "overlaps")
                for row in (rows[fault], total):
                    row.max_overlap = max(row.max_overlap, overlap)
    for previous, term in itertools.pairwise(terms):
        if term.token <= previous.token:
            bump(fault_at(term.start), "token_regressions")

    # -- the fenced resource (S1 fenced writes, S2 stale writes) ---------------------------
    applied = 0
    highest = -1
    resource_path = directory / "resource.jsonl"
    writes = _load(resource_path) if resource_path.exists() else []
    if not resource_path.exists():
        problems.append("the resource log was not saved")
    began = sorted((term.start, term.token) for term in terms)

    def newer_term_before(t: float, token: int) -> bool:
        """Whether a term with a token above ``token`` had begun before ``t``."""
        return any(token_ > token for start, token_ in began if start < t)

    for token_text, _writer, _seq, sent_text in writes:
        token, sent = int(token_text), float(sent_text)
        applied += 1
        if token < highest:
            bump(fault_at(sent), "fenced_overlaps")
        highest = max(highest, token)
        if newer_term_before(sent, token):
            bump(fault_at(sent), "stale_applied")
    rejected = 0
    for events in histories.values():
        for e in events:
            if e["e"] == "write" and not e["ok"]:
                rejected += 1
                bump(fault_at(e["t0"]), "stale_rejected")
                if e.get("at") == "redis":
                    bump(fault_at(e["t0"]), "rejected_at_redis")
                elif e.get("at") == "local":
                    bump(fault_at(e["t0"]), "rejected_locally")

    # -- L1 and L2 --------------------------------------------------------------------------
    def casualty(term: Term, until: float) -> bool:
        """A term that the fault ended: it does not count as the leader after the heal."""
        return term.reason in ("renew_deadline", "lock_lost") and term.end <= until

    window = ttl + retry + 1.0
    next_inject = [f["inject"] for f in faults[1:]] + [math.inf]
    for f, following in zip(faults, next_inject, strict=False):
        bump(f["fault"], "injected")
        heal = f["heal"]
        until = min(heal + window, following)
        after = [t.start for t in terms if t.end > heal and not casualty(t, until)]
        if not after:
            bump(f["fault"], "no_leader")
            continue
        gap = max(0.0, min(after) - heal)
        for row in (rows[f["fault"]], total):
            row.leaderless.append(gap)
        if gap > bound_after(f, faults, ttl, retry):
            bump(f["fault"], "over_bound")

    unexplained: list[dict[str, Any]] = []
    for term in terms:
        if term.reason not in ("renew_deadline", "lock_lost"):
            continue
        explained = any(f["inject"] - 0.05 <= term.end <= f["heal"] + window for f in faults)
        if explained:
            bump(fault_at(term.end), "step_downs")
        elif started <= term.end <= finished:
            unexplained.append({"instance": term.instance, "token": term.token, "t": term.end})

    return Report(
        rows=rows,
        total=total,
        unexplained_step_downs=unexplained,
        problems=problems,
        terms=len(terms),
        writes_accepted=applied,
        writes_rejected=rejected,
        ttl=ttl,
        retry=retry,
        duration=(finished if finished < math.inf else started) - started,
    )


def _check_callbacks(events: list[dict[str, Any]], *, killed: bool) -> list[tuple[float, str]]:
    """S3 for one process: become, task ended, lose, per term, matching acquired and lost."""
    wrong: list[tuple[float, str]] = []
    state = "idle"
    worker_running = False
    acquired = lost = becomes = loses = 0
    expect = {
        "become_start": ("idle", "becoming"),
        "become_end": ("becoming", "leading"),
        "lose_start": ("leading", "losing"),
        "lose_end": ("losing", "idle"),
    }
    for e in events:
        name = e["e"]
        if name == "acquired":
            acquired += 1
        elif name == "lost":
            lost += 1
        elif name == "worker_start":
            worker_running = True
        elif name == "worker_end":
            worker_running = False
        elif name in expect:
            before, after = expect[name]
            if state != before:
                wrong.append((e["t"], f"{name} while {state}"))
            if name == "lose_start" and worker_running:
                wrong.append((e["t"], "lose ran before the while_leader task ended"))
            if name == "become_start":
                becomes += 1
                if becomes > acquired:
                    wrong.append((e["t"], "become without a term"))
            if name == "lose_start":
                loses += 1
                if loses > lost:
                    wrong.append((e["t"], "lose before the term ended"))
            state = after
    if not killed:
        t = events[-1]["t"] if events else 0.0
        if state != "idle" or becomes != acquired or loses != lost:
            wrong.append(
                (t, f"ended {state} with {acquired} terms, {becomes} becomes, {loses} loses")
            )
    return wrong


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return f"{ordered[index] * 1000:.0f}"


def format_table(report: Report) -> str:
    """The report as a plain-text table, one row per fault type and a total."""
    header = (
        f"{'fault':<24}{'n':>4}{'S1 overl':>9}{'max ms':>7}{'fenced':>7}{'tok reg':>8}"
        f"{'stale app':>10}{'stale ref':>10}{'at redis':>9}{'unbal':>6}{'steps':>6}"
        f"{'leaderless':>11}"
        f"{'L1 p50':>7}{'p95':>6}{'max':>6}{'bound':>6}{'over':>5}"
    )
    lines = [header, "-" * len(header)]

    def line(name: str, row: Row, bound: str) -> str:
        gaps = [g for g in row.leaderless if g > 0]
        return (
            f"{name:<24}{row.injected:>4}{row.overlaps:>9}{row.max_overlap * 1000:>7.0f}"
            f"{row.fenced_overlaps:>7}{row.token_regressions:>8}{row.stale_applied:>10}"
            f"{row.stale_rejected:>10}{row.rejected_at_redis:>9}"
            f"{row.unbalanced:>6}{row.step_downs:>6}{len(gaps):>11}"
            f"{_ms(gaps, 0.5):>7}{_ms(gaps, 0.95):>6}{_ms(gaps, 1.0):>6}{bound:>6}"
            f"{row.over_bound + row.no_leader:>5}"
        )

    for name, row in report.rows.items():
        if name == "none" and row == Row():
            continue
        bound = f"{failover_bound(name, report.ttl, report.retry) * 1000:.0f}"
        lines.append(line(name, row, bound))
    lines.append("-" * len(header))
    lines.append(line("total", report.total, ""))
    t = report.total
    gaps = [g for g in t.leaderless if g > 0]
    lines += [
        "",
        f"terms {report.terms}, fenced writes applied {report.writes_accepted}, "
        f"refused {report.writes_rejected} ({t.rejected_at_redis} by Redis, "
        f"{t.rejected_locally} by the fence's local check), stale writes applied "
        f"{t.stale_applied}; "
        f"run {report.duration:.0f}s, "
        f"lock_ttl {report.ttl}s, retry_interval {report.retry}s",
        f"faults {t.injected}; leaderless after the heal in {len(gaps)} "
        f"(mean {statistics.fmean(gaps) * 1000 if gaps else 0:.0f} ms); "
        f"no leader within the run's timeout: {t.no_leader}",
        f"L2 step-downs without a fault: {len(report.unexplained_step_downs)}",
        f"problems: {len(report.problems)}",
        *(f"  {p}" for p in report.problems[:20]),
        "SAFE" if report.safe else "UNSAFE",
    ]
    return "\n".join(lines)
