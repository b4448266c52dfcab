-- Admits a writer of a read-write lock on this node (see `src/rwlock.rs`):
-- only while no other writer holds it and no reader's key is alive. A
-- waiting writer leaves an intent, which turns new readers away until a
-- writer gets in or the intent expires: a stream of readers cannot starve
-- the writers. The intent belongs to no writer in particular and never
-- stops one: writers exclude each other by the writer's key alone, as
-- mutexes do, so two writers whose intents landed on different nodes
-- cannot block each other until the intents expire.
-- KEYS: the lock's name key, the writer's key, the intent, the set of
-- reader keys, and with fencing the writer's fence counter.
-- ARGV: token, ttl in ms, intent ttl in ms (0: do not wait), writer id.
-- Returns {status, fence}: status 1 admitted, 0 held, -1 the name is a
-- mutex (or another value), -2 another kind of lock; fence is the counter
-- (0 without fencing).
-- (`rw_kind.lua` comes first: `claim_kind`.)
local refused = claim_kind()
if refused then
    return refused
end
local holder = redis.call("GET", KEYS[2])
if holder and holder ~= ARGV[1] then
    return {0, 0}
end
local live = 0
for _, reader in ipairs(redis.call("SMEMBERS", KEYS[4])) do
    if redis.call("EXISTS", reader) == 1 then
        live = live + 1
    else
        redis.call("SREM", KEYS[4], reader)
    end
end
if live > 0 then
    if tonumber(ARGV[3]) > 0 then
        redis.call("SET", KEYS[3], ARGV[4], "PX", ARGV[3])
    end
    return {0, 0}
end
redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[2])
-- Readers were kept out for a writer; one is in now. Waiting writers set
-- the intent again when they find readers.
redis.call("DEL", KEYS[3])
local fence = 0
if KEYS[5] then
    fence = tonumber(redis.call("GET", KEYS[5]) or "0")
end
return {1, fence}
