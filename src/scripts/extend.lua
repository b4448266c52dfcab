-- Compare-and-expire of a lock's keys: all of them, only if all are still
-- ours; a lock that expired or was taken over is never silently re-acquired.
-- KEYS = lock keys, ARGV[1] = token, ARGV[2] = new TTL in milliseconds.
-- Returns 1 when every key now lives ARGV[2] more, 0 otherwise.
for _, key in ipairs(KEYS) do
    if redis.call("GET", key) ~= ARGV[1] then
        return 0
    end
end
for _, key in ipairs(KEYS) do
    redis.call("PEXPIRE", key, ARGV[2])
end
return 1
