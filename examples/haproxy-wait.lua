-- tandem: hold a request while no server of a backend is usable, instead of
-- answering 503 at once. During a planned switchover the old primary drains
-- (its agent answers "up 0%": weight 0) and the new one is not up until
-- HAProxy's next check of it; a request arriving in between waits here, a
-- few milliseconds at a time, for a server that is up with a weight, for at
-- most the given time (then HAProxy answers as it would have).
--
--   global
--       lua-load /etc/haproxy/tandem-wait.lua
--   frontend web
--       http-request lua.tandem_wait_for_server web_primary 2000
core.register_action("tandem_wait_for_server", { "http-req" }, function(txn, backend, limit_ms)
    local be = core.backends[backend]
    if be == nil then
        return
    end
    local limit = tonumber(limit_ms) or 2000
    local waited = 0
    while true do
        for _, srv in pairs(be.servers) do
            local status = srv:get_stats()["status"] or ""
            if string.sub(status, 1, 2) == "UP" and srv:get_weight() > 0 then
                return
            end
        end
        if waited >= limit then
            return
        end
        core.msleep(5)
        waited = waited + 5
    end
end, 2)
