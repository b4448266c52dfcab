-- All-or-nothing acquire of N lock keys that also reads their fencing
-- counters, atomically, so the read belongs to this acquisition. Keys
-- already holding our token count as free (a retry after a dropped
-- connection).
-- KEYS[1..N] = lock keys, KEYS[N+1..2N] = their fence counter keys,
-- ARGV[1] = token, ARGV[2] = TTL in milliseconds, ARGV[3] = N.
-- Returns the largest counter (0 when unset) if the keys are ours, -1
-- otherwise.
local n = tonumber(ARGV[3])
for i = 1, n do
    local holder = redis.call("GET", KEYS[i])
    if holder and holder ~= ARGV[1] then
        return -1
    end
end
local highest = 0
for i = 1, n do
    local counter = redis.call("GET", KEYS[n + i]) or "0"
    local value = tonumber(counter)
    if not value then
        return redis.error_reply("ERR quorumlock: fence counter " .. KEYS[n + i] .. " is not a number")
    end
    highest = math.max(highest, value)
end
for i = 1, n do
    redis.call("SET", KEYS[i], ARGV[1], "PX", ARGV[2])
end
return highest
