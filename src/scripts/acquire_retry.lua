-- Second try of `SET key token NX PX ttl` after the connection dropped: the
-- first SET may have landed before the drop, so finding our own token under
-- the key counts as success. KEYS[1] = lock key, ARGV[1] = token,
-- ARGV[2] = TTL in milliseconds. Returns 1 when the key is ours, 0 otherwise.
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
    return 1
end
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return 1
end
return 0
