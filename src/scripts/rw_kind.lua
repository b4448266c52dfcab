-- Shared start of the read-write lock's scripts: makes sure KEYS[1], the
-- lock's name key, marks a read-write lock (recording it on first use).
-- Returns nil when it does, else the status for the caller to return:
-- -1 the name is a mutex (or another value), -2 another kind of lock.
local function claim_kind()
    local kind = redis.call("TYPE", KEYS[1])["ok"]
    if kind == "none" then
        redis.call("HSET", KEYS[1], "kind", "rwlock")
    elseif kind ~= "hash" then
        return {-1, 0}
    elseif redis.call("HGET", KEYS[1], "kind") ~= "rwlock" then
        return {-2, 0}
    end
    return nil
end
