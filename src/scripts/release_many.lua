-- Compare-and-delete of several keys; with ARGV[2] == "1", announce each
-- deleted key to waiters (see `src/wake.rs`).
-- KEYS = lock keys, ARGV[1] = token, ARGV[2] = "1" to announce.
-- Returns 1 when every key was ours and is deleted, 0 otherwise.
local all = 1
for _, key in ipairs(KEYS) do
    if redis.call("GET", key) == ARGV[1] then
        redis.call("DEL", key)
        if ARGV[2] == "1" then
            redis.call("PUBLISH", "quorumlock:released:" .. key, "")
        end
    else
        all = 0
    end
end
return all
