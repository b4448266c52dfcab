-- Takes permit slot KEYS[2] of the semaphore whose count is recorded under
-- KEYS[1] (see `src/semaphore.rs`), as `SET NX PX` would, but only where
-- the record agrees with our count, and records it where there is none.
-- The record lives at least as long as every permit this node granted
-- (here, and in `extend.lua`): a node that has a live permit of a count
-- always says so, so no quorum of another count can form while any holder
-- of this one holds; once the last permit is gone the record expires.
-- KEYS: the record, the slot, and with fencing the slot's fence counter.
-- ARGV: token, ttl in ms, permits.
-- Returns {status, value}: status 1 admitted (value: the fence counter, 0
-- without fencing), 0 the slot is held, -1 the name is a mutex (or another
-- value), -2 another kind of lock, -3 a semaphore of another count (value:
-- that count).
local ttl = tonumber(ARGV[2])
local kind = redis.call("TYPE", KEYS[1])["ok"]
if kind == "none" then
    redis.call("HSET", KEYS[1], "kind", "semaphore", "permits", ARGV[3])
    redis.call("PEXPIRE", KEYS[1], ttl)
elseif kind ~= "hash" then
    return {-1, 0}
elseif redis.call("HGET", KEYS[1], "kind") ~= "semaphore" then
    return {-2, 0}
else
    local permits = tonumber(redis.call("HGET", KEYS[1], "permits"))
    if permits ~= tonumber(ARGV[3]) then
        return {-3, permits or 0}
    end
end
local holder = redis.call("GET", KEYS[2])
if holder and holder ~= ARGV[1] then
    return {0, 0}
end
redis.call("SET", KEYS[2], ARGV[1], "PX", ttl)
local left = redis.call("PTTL", KEYS[1])
if left >= 0 and left < ttl then
    redis.call("PEXPIRE", KEYS[1], ttl)
end
local fence = 0
if KEYS[3] then
    fence = tonumber(redis.call("GET", KEYS[3]) or "0")
end
return {1, fence}
