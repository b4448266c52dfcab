-- Reads what a node holds for some keys, changing nothing (`inspect`).
-- KEYS = the keys to look at.
-- Returns, per key, its type, its value (a string's value; a hash's
-- `kind` and `permits`, joined by a space), and its remaining TTL in
-- milliseconds (-1: no TTL, -2: no key); a set (a read-write lock's
-- readers) is followed by the same for each member key still there.
local out = {}
for _, key in ipairs(KEYS) do
    local kind = redis.call("TYPE", key)["ok"]
    local value = ""
    if kind == "string" then
        value = redis.call("GET", key)
    elseif kind == "hash" then
        local fields = redis.call("HMGET", key, "kind", "permits")
        value = (fields[1] or "") .. " " .. (fields[2] or "")
    end
    table.insert(out, kind)
    table.insert(out, value)
    table.insert(out, redis.call("PTTL", key))
    if kind == "set" then
        for _, member in ipairs(redis.call("SMEMBERS", key)) do
            if redis.call("TYPE", member)["ok"] == "string" then
                table.insert(out, "string")
                table.insert(out, redis.call("GET", member))
                table.insert(out, redis.call("PTTL", member))
            end
        end
    end
end
return out
