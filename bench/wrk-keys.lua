-- wrk script of `make bench`: every request carries an X-User-Id header,
-- and done() prints one parseable line of results.
--
--   BENCH_WRK_KEYS=N     ids "u1" .. "uN", one picked at random per request
--   BENCH_WRK_HOTKEY=ID  every request carries this one id instead
--
-- Every scenario runs this same script, so wrk spends the same work per
-- request in all of them (it shares the cores with nginx and Redis).  The
-- requests are formatted once per thread, in init(), not per request.

local requests = {}
local count = 0
local threads = 0

-- runs in wrk's main Lua state, once per thread: number them
function setup(thread)
    threads = threads + 1
    thread:set("thread_id", threads)
end

function init(args)
    local hot = os.getenv("BENCH_WRK_HOTKEY")
    local keys = tonumber(os.getenv("BENCH_WRK_KEYS") or "") or 10000

    if hot and hot ~= "" then
        requests[1] = wrk.format(nil, nil, { ["X-User-Id"] = hot })
        count = 1
    else
        for i = 1, keys do
            requests[i] = wrk.format(nil, nil, { ["X-User-Id"] = "u" .. i })
        end
        count = keys
    end

    -- threads must not all walk the same sequence of ids
    math.randomseed(os.time() * 131 + (thread_id or 0) * 7919)
end

function request()
    return requests[math.random(count)]
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
