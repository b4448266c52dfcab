-- SET NX PX that also reads the resource's fencing counter, atomically, so
-- the counter read belongs to this acquisition. Finding our own token counts
-- as success (a retry after a dropped connection).
-- KEYS[1] = lock key, KEYS[2] = fence counter key,
-- ARGV[1] = token, ARGV[2] = TTL in milliseconds.
-- Returns the counter (0 when unset) if the key is ours, -1 otherwise.
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) or redis.call("GET", KEYS[1]) == ARGV[1] then
    return tonumber(redis.call("GET", KEYS[2]) or "0")
end
return -1
