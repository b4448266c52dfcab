-- Compare-and-delete of a lock's keys: each is removed only while it still
-- holds our token, so a holder whose lock expired can never delete the next
-- holder's key. With ARGV[2] == "1" (a holder's release), each deleted key
-- is announced to waiters (see `src/wake.rs`), and so is every key named
-- after it in ARGV (waiters on a set of holders, as writers waiting for
-- readers are); a failed attempt cleaning up announces nothing, or waiters
-- would storm the nodes on every failure.
-- The announcement is optional: `redis.pcall` keeps a PUBLISH that the ACL
-- denies (Redis 7 users start with `resetchannels`) from failing the script
-- after its first DEL, so every key of ours is deleted either way.
-- KEYS = lock keys, ARGV[1] = token, ARGV[2] = "1" to announce, ARGV[3..] =
-- more keys whose channels hear the release.
-- Returns 1 when every key was ours and is deleted, 0 otherwise, plus 2 when
-- an announcement reached a subscriber: someone is waiting for the lock.
local all = 1
local heard = 0
local deleted = false
local function announce(key)
    local receivers = redis.pcall("PUBLISH", "quorumlock:released:" .. key, "")
    if type(receivers) == "number" and receivers > 0 then
        heard = 2
    end
end
for _, key in ipairs(KEYS) do
    if redis.call("GET", key) == ARGV[1] then
        redis.call("DEL", key)
        deleted = true
        if ARGV[2] == "1" then
            announce(key)
        end
    else
        all = 0
    end
end
if deleted and ARGV[2] == "1" then
    for i = 3, #ARGV do
        announce(ARGV[i])
    end
end
return all + heard
