-- Records, or checks, how many permits a semaphore has: every client of a
-- name must agree, or the larger count would silently admit more holders.
-- Kept without a TTL (like fencing counters); delete the key on every
-- node to change the count.
-- KEYS[1] = the semaphore's key (its name), ARGV[1] = permits.
-- Returns 0 when recorded or equal; the recorded count when it differs;
-- -1 when the key is a mutex (or any other value); -2 when it is another
-- kind of quorumlock lock.
local kind = redis.call("TYPE", KEYS[1])["ok"]
if kind == "none" then
    redis.call("HSET", KEYS[1], "kind", "semaphore", "permits", ARGV[1])
    return 0
elseif kind ~= "hash" then
    return -1
end
if redis.call("HGET", KEYS[1], "kind") ~= "semaphore" then
    return -2
end
local permits = tonumber(redis.call("HGET", KEYS[1], "permits"))
if permits == tonumber(ARGV[1]) then
    return 0
end
return permits
