-- Writes a holder's fencing token back, only while the holder's key is still
-- there, and never lowers the counter.
-- KEYS[1] = lock key, KEYS[2] = fence counter key,
-- ARGV[1] = token, ARGV[2] = fencing token.
-- Returns 1 when the counter is now at least ARGV[2], 0 otherwise.
if redis.call("GET", KEYS[1]) == ARGV[1] then
    local current = tonumber(redis.call("GET", KEYS[2]) or "0")
    if current < tonumber(ARGV[2]) then
        redis.call("SET", KEYS[2], ARGV[2])
    end
    return 1
end
return 0
