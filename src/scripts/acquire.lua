-- All-or-nothing SET NX PX of one or more keys with one token: every key is
-- set or none is, so two clients asking for overlapping sets in any order
-- can never each hold a part. Keys already holding our token count as free,
-- which makes it the retry of a plain SET NX PX whose connection dropped
-- (that SET may have landed). A single key's first try is a plain SET NX PX.
-- KEYS = lock keys, ARGV[1] = token, ARGV[2] = TTL in milliseconds.
-- Returns 1 when every key is ours, 0 otherwise.
for _, key in ipairs(KEYS) do
    local holder = redis.call("GET", key)
    if holder and holder ~= ARGV[1] then
        return 0
    end
end
for _, key in ipairs(KEYS) do
    redis.call("SET", key, ARGV[1], "PX", ARGV[2])
end
return 1
