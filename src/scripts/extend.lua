-- Compare-and-expire: push the expiry out only while the key still holds our
-- token; a lock that expired or was taken over is never silently re-acquired.
-- KEYS[1] = lock key, ARGV[1] = token, ARGV[2] = new TTL in milliseconds.
-- Returns 1 when extended, 0 otherwise.
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
