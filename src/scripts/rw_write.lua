-- Admits a writer of a read-write lock on this node (see `src/rwlock.rs`):
-- only while no other writer holds it and no reader's key is alive. A
-- waiting writer leaves its intent, which turns new readers away until it
-- gets in or the intent expires: a stream of readers cannot starve it.
-- KEYS: the lock's name key, the writer's key, the intent, the set of
-- reader keys, and with fencing the writer's fence counter.
-- ARGV: token, ttl in ms, intent ttl in ms (0: do not wait), writer id
-- (the same across the retries of one `write`).
-- Returns {status, fence}: status 1 admitted, 0 held (or another writer
-- waits first), -1 the name is a mutex (or another value), -2 another
-- kind of lock; fence is the counter (0 without fencing).
-- (`rw_kind.lua` comes first: `claim_kind`.)
local refused = claim_kind()
if refused then
    return refused
end
local holder = redis.call("GET", KEYS[2])
if holder and holder ~= ARGV[1] then
    return {0, 0}
end
local intent = redis.call("GET", KEYS[3])
local live = 0
for _, reader in ipairs(redis.call("SMEMBERS", KEYS[4])) do
    if redis.call("EXISTS", reader) == 1 then
        live = live + 1
    else
        redis.call("SREM", KEYS[4], reader)
    end
end
if live > 0 or (intent and intent ~= ARGV[4]) then
    if tonumber(ARGV[3]) > 0 and (not intent or intent == ARGV[4]) then
        redis.call("SET", KEYS[3], ARGV[4], "PX", ARGV[3])
    end
    return {0, 0}
end
redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[2])
if intent then
    redis.call("DEL", KEYS[3])
end
local fence = 0
if KEYS[5] then
    fence = tonumber(redis.call("GET", KEYS[5]) or "0")
end
return {1, fence}
