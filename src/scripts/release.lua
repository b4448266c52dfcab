-- Compare-and-delete of a lock's keys: each is removed only while it still
-- holds our token, so a holder whose lock expired can never delete the next
-- holder's key. With ARGV[2] == "1" (a holder's release), each deleted key
-- is announced to waiters (see `src/wake.rs`); a failed attempt cleaning up
-- announces nothing, or waiters would storm the nodes on every failure.
-- The announcement is optional: `redis.pcall` keeps a PUBLISH that the ACL
-- denies (Redis 7 users start with `resetchannels`) from failing the script
-- after its first DEL, so every key of ours is deleted either way.
-- KEYS = lock keys, ARGV[1] = token, ARGV[2] = "1" to announce.
-- Returns 1 when every key was ours and is deleted, 0 otherwise, plus 2 when
-- an announcement reached a subscriber: someone is waiting for the lock.
local all = 1
local heard = 0
for _, key in ipairs(KEYS) do
    if redis.call("GET", key) == ARGV[1] then
        redis.call("DEL", key)
        if ARGV[2] == "1" then
            local receivers = redis.pcall("PUBLISH", "quorumlock:released:" .. key, "")
            if type(receivers) == "number" and receivers > 0 then
                heard = 2
            end
            -- A read-write lock's reader also tells the writers, who wait
            -- on the set of readers (see `src/rwlock.rs`).
            local readers = string.match(key, "^(.*):reader:[0-9a-f]+$")
            if readers then
                redis.pcall("PUBLISH", "quorumlock:released:" .. readers .. ":readers", "")
            end
        end
    else
        all = 0
    end
end
return all + heard
