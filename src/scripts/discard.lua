-- Compare-and-delete without telling anyone: removes what a failed or
-- abandoned attempt set. Waiters are not woken for it (the resource was
-- never ours to hand over, and waking them on every failed attempt turns a
-- crowd of waiters into a storm of attempts).
-- KEYS[1] = lock key, ARGV[1] = token. Returns 1 when deleted, 0 otherwise.
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
