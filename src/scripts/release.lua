-- Compare-and-delete: remove the key only while it still holds our token, so a
-- holder whose lock expired can never delete the next holder's key.
-- KEYS[1] = lock key, ARGV[1] = token. Returns 1 when deleted, 0 otherwise.
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
