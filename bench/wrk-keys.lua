-- wrk script of `make bench` and `make bench-curve`: every request carries
-- an X-User-Id header, and done() prints one parseable line of results.
--
--   BENCH_WRK_KEYS=N     ids "u1" .. "uN", one picked at random per request
--   BENCH_WRK_HOTKEY=ID  every request carries this one id instead
--
-- Every scenario runs this same script, so wrk spends the same work per
-- request in all of them (it shares the cores with nginx and Redis).  The
-- request is formatted once per thread, in init(), around a marker where
-- the id goes; request() only joins the two halves with the id's number,
-- so N costs nothing: a million ids take no more memory than ten, and no
-- file.

local head, tail = "", ""
local count = 0
local fixed = nil
local random = math.random
local threads = 0

-- runs in wrk's main Lua state, once per thread: number them
function setup(thread)
    threads = threads + 1
    thread:set("thread_id", threads)
end

function init(args)
    local hot = os.getenv("BENCH_WRK_HOTKEY")
    count = tonumber(os.getenv("BENCH_WRK_KEYS") or "") or 10000

    if hot and hot ~= "" then
        fixed = wrk.format(nil, nil, { ["X-User-Id"] = hot })
    else
        local req = wrk.format(nil, nil, { ["X-User-Id"] = "u\1" })
        local at = string.find(req, "\1", 1, true)
        head, tail = string.sub(req, 1, at - 1), string.sub(req, at + 1)
    end

    -- threads must not all walk the same sequence of ids
    math.randomseed(os.time() * 131 + (thread_id or 0) * 7919)
end

function request()
    if fixed then
        return fixed
    end
    return head .. random(count) .. tail
end

function done(summary, latency, requests_)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d connect=%d read=%d write=%d " ..
        "status=%d timeout=%d p50=%d p90=%d p99=%d p999=%d max=%d " ..
        "mean=%.1f\n",
        summary.requests, summary.duration, e.connect, e.read, e.write,
        e.status, e.timeout,
        latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency:percentile(99.9),
        latency.max, latency.mean))
end
