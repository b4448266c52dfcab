-- Compare-and-delete: remove the key only while it still holds our token, so a
-- holder whose lock expired can never delete the next holder's key. After a
-- delete, tell waiting acquirers (see `src/wake.rs`) on
-- "quorumlock:released:<key>".
-- KEYS[1] = lock key, ARGV[1] = token. Returns 1 when deleted, 0 otherwise.
if redis.call("GET", KEYS[1]) == ARGV[1] then
    redis.call("DEL", KEYS[1])
    redis.call("PUBLISH", "quorumlock:released:" .. KEYS[1], "")
    return 1
end
return 0
