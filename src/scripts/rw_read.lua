-- Admits a reader of a read-write lock on this node (see `src/rwlock.rs`).
-- KEYS: the lock's name key (records its kind), the writer's key, a
-- waiting writer's intent, the set of reader keys, this reader's key, and
-- with fencing the writer's fence counter.
-- ARGV: token, ttl in ms.
-- Returns {status, fence}: status 1 admitted, 0 a writer holds or waits,
-- -1 the name is a mutex (or another value), -2 another kind of lock;
-- fence is the writer's counter (0 without fencing).
-- (`rw_kind.lua` comes first: `claim_kind`.)
local refused = claim_kind()
if refused then
    return refused
end
if redis.call("EXISTS", KEYS[2]) == 1 or redis.call("EXISTS", KEYS[3]) == 1 then
    return {0, 0}
end
-- Forget two readers whose keys are gone, so the set stays small even
-- when no writer comes to sweep it.
for _, reader in ipairs(redis.call("SRANDMEMBER", KEYS[4], 2)) do
    if redis.call("EXISTS", reader) == 0 then
        redis.call("SREM", KEYS[4], reader)
    end
end
redis.call("SET", KEYS[5], ARGV[1], "PX", ARGV[2])
redis.call("SADD", KEYS[4], KEYS[5])
local fence = 0
if KEYS[6] then
    fence = tonumber(redis.call("GET", KEYS[6]) or "0")
end
return {1, fence}
