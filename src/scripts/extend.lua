-- Compare-and-expire of a lock's keys: all of them, only if all are still
-- ours; a lock that expired or was taken over is never silently re-acquired.
-- Keys after the first ARGV[3] are companions that must live at least as
-- long as the lock (a semaphore's count record): their TTL is raised to
-- the new one where it is shorter, never lowered, never set on a key
-- without one.
-- KEYS = lock keys, then companions; ARGV[1] = token, ARGV[2] = new TTL
-- in milliseconds, ARGV[3] = how many of KEYS are lock keys (default all).
-- Returns 1 when every lock key now lives ARGV[2] more, 0 otherwise.
local n = tonumber(ARGV[3]) or #KEYS
local ttl = tonumber(ARGV[2])
for i = 1, n do
    if redis.call("GET", KEYS[i]) ~= ARGV[1] then
        return 0
    end
end
for i = 1, n do
    redis.call("PEXPIRE", KEYS[i], ttl)
end
for i = n + 1, #KEYS do
    local left = redis.call("PTTL", KEYS[i])
    if left >= 0 and left < ttl then
        redis.call("PEXPIRE", KEYS[i], ttl)
    end
end
return 1
