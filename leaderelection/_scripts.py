"""The Lua scripts: every state change of an election is one of them, one round trip.

Each opens with its contract: ``KEYS``, ``ARGV`` and what it returns. The lock holds a random
per-term token and is only renewed or deleted by a script that compares it, so a candidate can
never extend or release a term that is not its own. All keys of one election share a Redis
Cluster hash tag, so every script touches one slot.
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = [
    "ACQUIRE",
    "FENCED_DELETE",
    "FENCED_HSET",
    "FENCED_SET",
    "NO_INFO",
    "READ",
    "RELEASE",
    "RENEW",
    "SHA",
    "STEP_DOWN",
    "fenced_eval",
]

# Sends ARGV[n] on channel ARGV[m] without failing the script: SPUBLISH (the shard channel, on
# the node that owns the slot) when ARGV[s] is "1" and the server has it (Redis 7+, Valkey),
# else PUBLISH (Redis 6.2 broadcasts it over the cluster bus). Returns the reply or the error.
_ANNOUNCE = """
local function announce(sharded, channel, message)
  if sharded == '1' then
    local sent = redis.pcall('SPUBLISH', channel, message)
    if type(sent) ~= 'table' or not string.find(string.lower(sent.err or ''), 'unknown', 1, true)
    then
      return sent
    end
  end
  return redis.pcall('PUBLISH', channel, message)
end
"""

# Records that a candidate of priority ARGV[p] waits for the lock, in the waiting key (the highest
# priority waiting, expiring two leases after it last asked), and returns the highest priority
# waiting (or nil when the server refuses the key: an ACL written for an older version).
_WAITING = """
local function waiting(key, priority, ttl_ms)
  local top = redis.pcall('GET', key)
  if type(top) == 'table' then
    return nil
  end
  local mine = tonumber(priority)
  top = tonumber(top)
  if top == nil or mine >= top then
    redis.pcall('SET', key, priority, 'PX', 2 * tonumber(ttl_ms))
    return mine
  end
  return top
end
"""

NO_INFO: Final = "LEADERELECTION-NOINFO"
"""The error code of an acquire whose server refused INFO (restart protection needs it)."""

# KEYS[1] lock key, KEYS[2] info key, KEYS[3] fence key, KEYS[4] waiting key
# ARGV[1] the new term's random token
# ARGV[2] lease length in milliseconds
# ARGV[3] the info record as JSON without its closing brace (the script adds the fencing token)
# ARGV[4] tokens of ours the lock may still hold, comma-separated, or "" (such a lock is taken over;
#         an empty lock value is never ours)
# ARGV[5] restart protection: the server uptime in seconds needed before a free lock is granted
#         (a restarted server may have lost, or restored from an older snapshot, the lock of a
#         leader that is still alive); 0 disables it
# ARGV[6] "1" to refuse with READONLY when the server is a replica (checked on the first attempt,
#         since a replica only shows it is read-only once a write is tried)
# ARGV[7] the election's channel, on which the new term is announced ("A " and the info JSON) for
#         observers; "" to announce nothing
# ARGV[8] "1" to announce on the shard channel (Redis Cluster), else ""
# ARGV[9] the candidate's priority (recorded in the waiting key when the lock is held)
# Returns {1, fencing token (string), lease ms}         acquired
#         {0, remaining lease ms, info JSON or false, highest priority waiting or false}
#                                                        held by someone else
#         {2, wait ms, server uptime s}                 held back by restart protection
#         error LEADERELECTION-NOINFO when the server refuses INFO and restart protection is on
# The fencing token is max(previous + 1, server time in microseconds), kept as a Redis integer
# string: Lua numbers are doubles and would print a 16-digit token in exponent form.
ACQUIRE: Final = (
    _ANNOUNCE
    + _WAITING
    + """
if ARGV[6] == '1' then
  local replication = redis.pcall('INFO', 'replication')  -- refused: the writes will tell
  if type(replication) == 'string' and string.find(replication, 'role:slave', 1, true) then
    return redis.error_reply("READONLY You can't write against a read only replica.")
  end
end
local holder = redis.call('GET', KEYS[1])
local ours = holder and holder ~= ''
  and string.find(',' .. ARGV[4] .. ',', ',' .. holder .. ',', 1, true)
if holder and not ours then
  local top = waiting(KEYS[4], ARGV[9], ARGV[2]) or false
  return {0, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2]), top}
end
local need = tonumber(ARGV[5])
if not holder and need > 0 then
  local server = redis.pcall('INFO', 'server')
  if type(server) ~= 'string' then
    return redis.error_reply('LEADERELECTION-NOINFO ' .. tostring(server.err))
  end
  local uptime = tonumber(string.match(server, 'uptime_in_seconds:(%d+)'))
  if uptime < need then
    return {2, (need - uptime) * 1000, uptime}
  end
end
local fence = redis.call('GET', KEYS[3])
if fence and not tonumber(fence) then
  return redis.error_reply('WRONGTYPE leaderelection fence key ' .. KEYS[3] .. ' is not an integer')
end
local t = redis.call('TIME')
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))
local token
if fence and tonumber(fence) >= tonumber(now_us) then
  redis.call('INCR', KEYS[3])
  token = redis.call('GET', KEYS[3])
else
  redis.call('SET', KEYS[3], now_us)
  token = now_us
end
local info = ARGV[3] .. ',"fencing_token":' .. token .. '}'
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], info, 'PX', ARGV[2])
if ARGV[7] ~= '' then
  announce(ARGV[8], ARGV[7], 'A ' .. info)  -- for observers only: a refusal changes nothing
end
return {1, token, tonumber(ARGV[2])}
"""
)

# KEYS[1] lock key, KEYS[2] info key
# ARGV[1] our term's token, ARGV[2] lease length in ms, ARGV[3] the new info record (JSON)
# Returns 1 when the lease was extended, 0 when the lock is no longer ours.
RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lock key, KEYS[2] info key, KEYS[3] fence key, KEYS[4] waiting key
# ARGV[1] tokens of ours, comma-separated, ARGV[2] the election's channel, ARGV[3] our instance id
# ARGV[4] the fencing token of the term released, or "" when the releaser does not know it (an
#         acquire whose reply was lost): the fence key then holds it, since the acquire that set
#         the lock to one of our tokens was the last to advance the fence
# ARGV[5] "1" to announce on the shard channel (Redis Cluster), else ""
# Publishes "R <fencing token> <instance id> <subscribers> <highest priority waiting>": how many
# connections subscribe to the channel (-1 when the server refuses PUBSUB) and the waiting key's
# priority ("" when none), so that the followers spread their attempts and let the highest
# priority go first.
# Returns 1 when the lock held one of them and is now deleted (and followers were told), 0 when
# it held none, {3, error} when it was deleted but the server refused the PUBLISH (an ACL).
RELEASE: Final = (
    _ANNOUNCE
    + """
local holder = redis.call('GET', KEYS[1])
local ours = holder and holder ~= ''
  and string.find(',' .. ARGV[1] .. ',', ',' .. holder .. ',', 1, true)
if ours then
  local fence = ARGV[4]
  if fence == '' then
    fence = redis.call('GET', KEYS[3]) or '0'
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  local counted = redis.pcall('PUBSUB', ARGV[5] == '1' and 'SHARDNUMSUB' or 'NUMSUB', ARGV[2])
  if type(counted) ~= 'table' or counted.err then
    counted = redis.pcall('PUBSUB', 'NUMSUB', ARGV[2])  -- Redis 6.2's cluster: no shard channels
  end
  local subscribers = -1
  if type(counted) == 'table' and not counted.err then
    subscribers = counted[2]
  end
  local top = redis.pcall('GET', KEYS[4])
  if type(top) ~= 'string' then
    top = ''
  end
  local published = announce(
    ARGV[5], ARGV[2], 'R ' .. fence .. ' ' .. ARGV[3] .. ' ' .. subscribers .. ' ' .. top
  )
  if type(published) == 'table' and published.err then
    return {3, published.err}
  end
  return 1
end
return 0
"""
)

# KEYS[1] lock key (routes the call to the node of the election's slot)
# ARGV[1] the election's channel, ARGV[2] the message, ARGV[3] "1" for the shard channel
# Returns how many subscribers received it.
STEP_DOWN: Final = (
    _ANNOUNCE
    + """
local sent = announce(ARGV[3], ARGV[1], ARGV[2])
if type(sent) == 'table' and sent.err then
  return redis.error_reply(sent.err)
end
return sent
"""
)

# KEYS[1] lock key, KEYS[2] info key
# Returns {info JSON or false, remaining lease in ms (PTTL: -2 when there is no lock)}
READ: Final = """
return {redis.call('GET', KEYS[2]), redis.call('PTTL', KEYS[1])}
"""

# The fenced writes. Each takes the caller's KEYS and ARGV first, then two of its own, last:
# KEYS[#KEYS - 1] lock key, KEYS[#KEYS] fence key
# ARGV[#ARGV - 1] the term's random token (the lock's value), ARGV[#ARGV] its fencing token
# and writes only when the fence key holds exactly that fencing token (a string comparison: a
# 16-digit token is not exact as a Lua number) and the lock still holds the term's token: no
# newer term was granted and the term's lease has not ended (expired, released). A missing
# fence key (a server that lost its data) holds no term: refused.
# Returns {1, ...} when written, {0} when refused.
_FENCED = """
local function fenced()
  local nk, na = #KEYS, #ARGV
  return redis.call('GET', KEYS[nk]) == ARGV[na]
    and redis.call('GET', KEYS[nk - 1]) == ARGV[na - 1]
end
"""

# KEYS[1] the key, then the guard's two; ARGV[1] the value, ARGV[2] PX in ms or "", then the
# guard's two. Returns {1} when written, {0} when refused.
FENCED_SET: Final = (
    _FENCED
    + """
if not fenced() then
  return {0}
end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return {1}
"""
)

# KEYS[1] the hash, then the guard's two; ARGV field, value, field, value, ..., then the guard's
# two. One HSET per field: no unpack() of a long argument list. Returns {1} or {0}.
FENCED_HSET: Final = (
    _FENCED
    + """
if not fenced() then
  return {0}
end
for i = 1, #ARGV - 2, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return {1}
"""
)

# KEYS the keys to delete, then the guard's two; ARGV the guard's two. Returns {1} or {0}.
FENCED_DELETE: Final = (
    _FENCED
    + """
if not fenced() then
  return {0}
end
for i = 1, #KEYS - 2 do
  redis.call('DEL', KEYS[i])
end
return {1}
"""
)


def fenced_eval(script: str) -> str:
    """The caller's ``script`` as a fenced write: its body runs only when the guard passes.

    The guard comes first, on the first line, so that nothing of the script can run before it
    (even a script that closes the function early); then the body becomes ``local function
    body(KEYS, ARGV) ... end``, called with the caller's own keys and arguments (the guard's, at
    the end, cut off): the parameters shadow the globals, so the script reads ``KEYS[1]`` and
    ``ARGV[1]`` as if it ran alone. The script starts on the first line too, so that the line
    numbers of Redis's error messages are the caller's. Returns ``{1, what the body returned}``
    when written, ``{0}`` when refused; an error reply the body returns (``redis.error_reply``)
    is returned as the script's error.
    """
    return (
        "local nk_, na_ = #KEYS, #ARGV "
        "if redis.call('GET', KEYS[nk_]) ~= ARGV[na_] "
        "or redis.call('GET', KEYS[nk_ - 1]) ~= ARGV[na_ - 1] then return {0} end "
        "local function body(KEYS, ARGV) "
        + script
        + """
end
local keys, argv = {}, {}
for i = 1, nk_ - 2 do
  keys[i] = KEYS[i]
end
for i = 1, na_ - 2 do
  argv[i] = ARGV[i]
end
local result = body(keys, argv)
if type(result) == 'table' and result.err then
  return result
end
return {1, result}
"""
    )


SHA: Final = {
    src: hashlib.sha1(src.encode()).hexdigest()
    for src in (
        ACQUIRE,
        RENEW,
        RELEASE,
        READ,
        STEP_DOWN,
        FENCED_SET,
        FENCED_HSET,
        FENCED_DELETE,
    )
}
