-- Writes a holder's fencing token back to the counters of its N keys, only
-- while every key still holds the holder's token, and never lowers them.
-- KEYS[1..N] = lock keys, KEYS[N+1..2N] = their fence counter keys,
-- ARGV[1] = token, ARGV[2] = fencing token, ARGV[3] = N.
-- Returns 1 when every counter is now at least ARGV[2], 0 otherwise.
local n = tonumber(ARGV[3])
for i = 1, n do
    if redis.call("GET", KEYS[i]) ~= ARGV[1] then
        return 0
    end
end
for i = 1, n do
    local current = tonumber(redis.call("GET", KEYS[n + i]) or "0") or 0
    if current < tonumber(ARGV[2]) then
        redis.call("SET", KEYS[n + i], ARGV[2])
    end
end
return 1
