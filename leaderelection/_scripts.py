"""The Lua scripts: every state change of an election is one of them, one round trip.

Each opens with its contract: ``KEYS``, ``ARGV`` and what it returns. The lock holds a random
per-term token and is only renewed or deleted by a script that compares it, so a candidate can
never extend or release a term that is not its own. All keys of one election share a Redis
Cluster hash tag, so every script touches one slot.
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["ACQUIRE", "NO_INFO", "READ", "RELEASE", "RENEW", "SHA", "STEP_DOWN"]

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

SHA: Final = {
    src: hashlib.sha1(src.encode()).hexdigest()
    for src in (ACQUIRE, RENEW, RELEASE, READ, STEP_DOWN)
}
