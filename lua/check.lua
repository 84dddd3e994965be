-- Rate-limit checks, many in one atomic call (contract and maths:
-- lua/README.md).  KEYS[i] is the counter key of check i; its 9 arguments
-- are ARGV[9*i-8 .. 9*i]: group, deadline_ms, algorithm (tb | sw), limit,
-- window_ms, cost, mode (0 enforced, 1 dry run), field, policy_field: the
-- fields of the hash rl:rules holding the customer's rule and its rule
-- for the policy, read to replace limit, window and algorithm, or '' when
-- the caller knows the rule.  Returns a flat array: for each check
-- {allowed, remaining, retry_ms, reset_ms, t_ms, rule_limit, rule_window,
-- rule_algorithm, rule_ttl_ms}, then now_ms; allowed is -1 for a check
-- whose group was past its deadline, -2 for one whose group must be sent
-- again under the algorithm of a rule read (the key's name says the
-- algorithm); the rule is -1, -1, -1 when not read, 0, 0, 0 when read and
-- there is none; rule_ttl_ms -1 when not read, else the ms until the rule
-- read expires (0: it does not), after which another rule or none applies.
-- An expired rule (its expiry at or before the server's TIME) is no rule.
--
-- A group (adjacent checks with the same group argument) is all or
-- nothing: it takes its checks' costs only if every enforced check of it
-- allows; a dry-run check that would deny neither fails its group nor
-- takes anything.  Groups run in order, each seeing what the ones before
-- it took.
--
-- The states are those of token_bucket.lua and sliding_window.lua, byte
-- for byte: tb is struct.pack('<ddd', ts, u, w), the usage u (in 1/w of a
-- token) as of ms ts, w the window_ms it was counted with; sw is
-- struct.pack('<dddd', win, cur, prev, w), the index of the current fixed
-- window, its count and the previous window's.  All arithmetic is on whole
-- numbers: exact in doubles while the products stay below 2^53.
--
-- This runs for every request and Redis CPU is what the limiter costs.
-- Redis's own share of a check (its 7 arguments and 5 answers, its key in
-- one MGET, its SET) is ~20k instructions, ~2.5k more for the 2 arguments
-- and 3 answers of the rule; the script's share is kept small by what
-- measuring showed (lua/README.md, Cost):
-- - a call into C (math.floor, tonumber, type, string.*, struct.*) costs
--   ~500 instructions on top of its work, a call of a Lua function ~600,
--   an arithmetic operation ~60: the allowed path calls only struct.unpack
--   and pack and, per TTL, string.format; the searches with their bounded
--   steps run only where a closed form fails its check.  Hence x - x % 1
--   for floor(x) (exact for x >= 0), and numeric strings that are already
--   checked converted by arithmetic;
-- - every key is read by one MGET, not one GET each (except a lone check);
-- - each run of the script makes its functions anew (a closure costs more
--   the more locals it uses from outside): four, made before the rest,
--   and the one that reads rules only when a check names a field;
-- - a table grows by rehashing: the reply is made at its full size at
--   once, and numbers that repeat between checks (limits, windows, costs,
--   deadlines) are checked and converted once per call.

-- RL_MAX_LIMIT, RL_MIN_WINDOW_MS and RL_MAX_WINDOW_MS are set by lines the
-- module puts in front of this file, from src/rl_rule.h (the bounds of a
-- rule everywhere); t/003-lua-scripts.t does the same.

local KEYS, ARGV = KEYS, ARGV
local n = #KEYS
if n < 1 or n > 1024 then
    return redis.error_reply('ERR ratelimit: need 1 to 1024 keys')
end
if #ARGV ~= 9 * n then
    return redis.error_reply('ERR ratelimit: need 9 arguments per key')
end

-- now: the server's clock in whole ms; out: the reply, 9 numbers per check
-- (set below; the functions put each check's first five there).
local now, out
local spack, sunpack, format = struct.pack, struct.unpack, string.format
local MAX_U = RL_MAX_LIMIT * RL_MAX_WINDOW_MS
local ttls              -- TTLs of sliding windows printed so far

------------------------------------------------------------------------
-- Token bucket: capacity L, refill L / W tokens per ms.  The usage is
-- counted in 1/W of a token, the unit in which the refill is exactly L per
-- ms and the capacity L * W.  A call e ms after ts, with d the usage left
-- then, passes need units iff d + need * W <= L * W.
------------------------------------------------------------------------

-- The smallest whole x in [0, W] such that a call x ms after a state's ts
-- (usage u then) passes K = need * W units (need <= L): x >= W or
-- u - x * L + K <= LW.  That is monotone in x and is the very expression a
-- later call evaluates (d + K with d = u - x * L, or 0 once that is
-- negative, which passes too).  The closed form is exact up to the
-- rounding of one quotient; the bounded steps make it exactly the first
-- passing ms even where the products round (past 2^53), and the fallback W
-- always passes.
local function tb_first(u, K, L, W, LW)
    local x = (u + K - LW) / L
    if x < 0 then
        x = 0
    elseif x % 1 > 0 then
        x = x - x % 1 + 1
    end
    for _ = 1, 3 do
        if x < W and u - x * L + K > LW then x = x + 1 else break end
    end
    if x > W then x = W end
    if x < W and u - x * L + K > LW then x = W end
    if x > 0 and u - (x - 1) * L + K <= LW then x = x - 1 end
    return x
end

-- Decides check o / 9 + 1 (cost c) against the value v of its key and
-- puts its first five numbers in out[o+1 .. o+5].  Returns the value to write
-- and its TTL (false: keep the key's) when it allows and takes something,
-- else nothing.
local function tb(o, v, L, W, c)
    local LW = L * W
    local ts, u, w
    if v and #v == 24 then
        ts, u, w = sunpack('<ddd', v)
    elseif v and type(v) == 'table' then
        -- A hash {used, ts} left by the version of this script that kept
        -- `used` in tokens carries on (rounded up to a whole unit).
        local used = tonumber(v[1])
        ts = tonumber(v[2])
        if used and ts then
            u, w = used * W, W
            if u % 1 > 0 then u = u - u % 1 + 1 end
        else
            ts = nil
        end
    end

    -- A state we cannot trust (wrong length, NaN/inf, negative, a
    -- fraction, out of range, a ts more than a window ahead) is a fresh
    -- key.
    if ts and ts >= 0 and ts <= now + W and ts % 1 == 0
            and u >= 0 and u <= MAX_U and u % 1 == 0
            and (w == W or w >= RL_MIN_WINDOW_MS and w <= RL_MAX_WINDOW_MS
                           and w % 1 == 0) then
        -- Counted with another window: the same tokens in the new unit,
        -- rounded up.
        if w ~= W then
            u = u * W / w
            if u % 1 > 0 then u = u - u % 1 + 1 end
        end
        -- Judge the old usage against the current limit.
        if u > LW then u = LW end
    else
        ts, u = now, 0
    end

    -- The usage left now.  A clock that stepped back (failover) gives no
    -- refill rather than a negative one; a whole window refills any
    -- bucket.  A later call must compute exactly what we promise below,
    -- so the tests there repeat these very expressions.
    local e = now - ts
    local d = 0
    if e < W then
        if e < 0 then e = 0 end
        d = u - e * L
        if d < 0 then d = 0 end
    end

    if c > 0 and d + c * W <= LW then
        -- Allowed, and c taken: the state written is (now, d).
        d = d + c * W
        -- Full again (d - x * L <= 0) after x ms: ceil(d / L).  The
        -- quotient can round down across a whole number (never up), hence
        -- the one step up.
        local reset = d / L
        if reset % 1 > 0 then reset = reset - reset % 1 + 1 end
        if d - reset * L > 0 then reset = reset + 1 end
        if reset > W then reset = W end
        -- remaining = floor((LW - d) / W), the quotient checked the other
        -- way.
        local left = LW - d
        local r = left / W
        r = r - r % 1
        if r * W > left then r = r - 1 end
        -- t: r + 1 units pass x ms from now, once d - x * L + K <= LW:
        -- x = ceil((d + K - LW) / L), > 0 and <= W.  Checked on both
        -- sides; the search only if the quotient rounded.
        local x = W
        if r < L then
            local K = (r + 1) * W
            x = (d + K - LW) / L
            if x % 1 > 0 then x = x - x % 1 + 1 end
            if x < 1 or x > W or d - x * L + K > LW
                    or d - (x - 1) * L + K <= LW then
                x = tb_first(d, K, L, W, LW)
            end
            -- Past 2^53 (L * W) the sums round: units that are not there
            -- yet are never said to be there now.
            if x < 1 then x = 1 end
        end
        out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] =
            1, r, 0, reset, x
        -- Once refilled the key is identical to an absent one: let it go
        -- then.
        return spack('<ddd', now, d, W), format('%d', reset)
    end

    -- Nothing is written: the stored state (and its TTL) stays as the
    -- last taking call left it, and the times below are measured from its
    -- ts exactly as the next call will measure them.
    local left = LW - d
    local r = left / W
    r = r - r % 1
    if r * W > left then r = r - 1 end
    -- Full again after y ms of ts (u - y * L <= 0), as above.
    local y = u / L
    if y % 1 > 0 then y = y - y % 1 + 1 end
    if y < W and u - y * L > 0 then y = y + 1 end
    if y > W then y = W end
    local reset = ts + y - now
    if reset < 0 then reset = 0 end

    -- Cost 0 takes nothing but is decided as 1: is the caller out of quota?
    local need = c
    if need < 1 then need = 1 end
    if d + need * W <= LW then
        -- Allowed, cost 0 (or decided again after its group failed): r + 1
        -- units pass after t (never: say the window).
        local x = W
        if r < L then
            x = ts + tb_first(u, (r + 1) * W, L, W, LW) - now
            if x > W then x = W end
            if x < 1 then x = 1 end
        end
        out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] =
            1, r, 0, reset, x
        return
    end

    -- Denied.  A cost above the limit never passes: say the window.
    local retry = W
    if need <= L then
        retry = ts + tb_first(u, need * W, L, W, LW) - now
        if retry < 1 then retry = 1 end
    end
    out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] =
        0, r, retry, reset, retry
end

------------------------------------------------------------------------
-- Sliding window counter: estimate = prev * (W - e) / W + cur at ms e of
-- the current fixed window; need units pass iff
-- prev * (W - e) + (cur + need) * W <= L * W, monotone in e.
------------------------------------------------------------------------

-- The first ms (from the start of the window) after ms e at which need
-- units (need <= L) pass, given (p, c) that fail at e: later in this
-- window (only while p still weighs), else in the next one (where c has
-- become the previous count and nothing is counted yet), else at the
-- start of the one after, where the estimate is 0.  A later call rolls
-- the stored windows over the same way, so it computes exactly what we
-- promise here.
--
-- In each window, the earliest ms in [lo, W-1] at which a window holding
-- (p, c) passes: the closed form solves p * (W - ms) <= LW - K and is
-- exact up to the rounding of one quotient; the bounded steps make it
-- exactly the first passing ms whatever the rounding, and the fallback
-- W - 1 is known to pass.
local function sw_pass(p, c, need, e, W, LW)
    local lo = e + 1
    for window = 0, 1 do
        local K = (c + need) * W
        -- passes at all before the window ends (the test at W - 1)?
        if lo <= W - 1 and p + K <= LW then
            local ms = lo
            if p > 0 then
                local q = (LW - K) / p
                ms = W - (q - q % 1)
                if ms < lo then ms = lo end
                if ms > W - 1 then ms = W - 1 end
            end
            for _ = 1, 3 do
                if p * (W - ms) + K > LW then ms = ms + 1 else break end
            end
            if ms > W - 1 or p * (W - ms) + K > LW then
                ms = W - 1
            else
                for _ = 1, 3 do
                    if ms > lo and p * (W - (ms - 1)) + K <= LW then
                        ms = ms - 1
                    else
                        break
                    end
                end
            end
            return window * W + ms
        end
        p, c, lo = c, 0, 0
    end
    return 2 * W
end

-- As tb above.
local function sw(o, v, L, W, c)
    -- floor(now / W); the quotient may round up to the next whole number
    -- in the last ms of a long window, which the product tells exactly.
    local idx = now / W
    idx = idx - idx % 1
    if idx * W > now then idx = idx - 1 end

    local win, cur, prev, w
    local packed = false
    if v and #v == 32 then
        win, cur, prev, w = sunpack('<dddd', v)
        packed = true
    elseif v and type(v) == 'table' then
        -- A hash {win, cur, prev, w} left by the version of this script
        -- that kept these four as fields carries on.
        win, cur, prev, w = tonumber(v[3]), tonumber(v[4]), tonumber(v[5]),
                            tonumber(v[6])
    end

    -- Counts can never exceed the largest limit, since only allowed
    -- requests are counted.  Anything we cannot trust, or counts made with
    -- another window length (their index means nothing now), void the
    -- whole state: fresh key.  A stored window more than one ahead is no
    -- plausible clock step: garbage too.
    local keep = false
    if w == W and win and cur and prev
            and win >= 0 and win <= idx + 1 and win % 1 == 0
            and cur >= 0 and cur <= RL_MAX_LIMIT and cur % 1 == 0
            and prev >= 0 and prev <= RL_MAX_LIMIT and prev % 1 == 0 then
        if win >= idx then
            -- No rollover: whoever wrote this state in this window set the
            -- TTL to the end of the next one, which is what it still is.
            keep = packed
        elseif win == idx - 1 then
            prev, cur = cur, 0
        else
            prev, cur = 0, 0
        end
    else
        win, cur, prev = idx, 0, 0
    end

    -- The clock stepped back over a window edge (failover): stand at the
    -- start of the stored window instead, which keeps every count and
    -- keeps the promised times honest; everything below is relative to
    -- `at`.
    local at = now
    if win > idx then
        idx = win
        at = idx * W
    end
    local start = idx * W
    local e = at - start
    local LW = L * W
    local weight = prev * (W - e)

    -- Cost 0 takes nothing but is decided as 1: is the caller out of quota?
    local need = c
    if need < 1 then need = 1 end
    local allowed = weight + (cur + need) * W <= LW
    if allowed then cur = cur + c end

    -- remaining = floor(L - estimate - taken), >= 0: the further units
    -- that would pass right now, the k-th iff weight + (cur + k) * W <= LW.
    -- The closed form is checked against that very test: one step either
    -- way makes it exact even where the products round (past 2^53, by far
    -- less than the W a unit adds).
    local r = (LW - weight) / W
    r = r - r % 1 - cur
    if r > 0 and weight + (cur + r) * W > LW then
        r = r - 1
    elseif weight + (cur + r + 1) * W <= LW then
        r = r + 1
    end
    if r < 0 then r = 0 end

    -- This window's count weighs until the end of the next one, the
    -- previous one's until the end of this one; after that the key is
    -- identical to an absent one.
    local reset = 0
    if cur > 0 then
        reset = start + 2 * W - now
    elseif prev > 0 then
        reset = start + W - now
    end

    if allowed then
        -- t: r + 1 units pass at ms W - floor((LW - K) / prev) of this
        -- window, K = (cur + r + 1) * W, if prev weighs and that is before
        -- its end; checked on both sides, else the search, which also
        -- looks at the next windows.  Never more than a window.
        local x = W
        if r < L then
            local K = (cur + r + 1) * W
            x = -1
            if prev > 0 and prev + K <= LW then
                x = (LW - K) / prev
                x = W - (x - x % 1)
                if x <= e or x >= W or prev * (W - x) + K > LW
                        or x - 1 > e and prev * (W - (x - 1)) + K <= LW then
                    x = -1
                end
            end
            if x < 0 then x = sw_pass(prev, cur, r + 1, e, W, LW) end
            x = start + x - now
            if x > W then x = W end
            if x < 1 then x = 1 end
        end
        out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] =
            1, r, 0, reset, x
        if c > 0 then
            local value = spack('<dddd', idx, cur, prev, W)
            if keep then return value, false end
            -- The same TTL for every key of this window length this call.
            if not ttls then ttls = {} end
            local px = ttls[reset]
            if not px then
                px = format('%d', reset)
                ttls[reset] = px
            end
            return value, px
        end
        return
    end

    -- Denied: nothing is written.  A cost above the limit never passes:
    -- say the window.
    local retry = W
    if need <= L then
        retry = start + sw_pass(prev, cur, need, e, W, LW) - now
    end
    out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] =
        0, r, retry, reset, retry
end

------------------------------------------------------------------------
-- The call.
------------------------------------------------------------------------

local find = string.find

-- Flooring is what keeps retry_ms honest: a caller that waits retry_ms
-- real ms reads a clock at least that much further on.
local t = redis.call('TIME')
local us = t[2] + 0
now = t[1] * 1000 + (us - us % 1000) / 1000

-- The reply, at its full size at once (ARGV has 9 values per check), up
-- to what unpack can put on Lua's stack (8000 values): past 888 checks it
-- grows once.
if n == 1 then
    out = {0, 0, 0, 0, 0, 0, 0, 0, 0}
elseif n <= 888 then
    out = {unpack(ARGV, 1, 9 * n)}
else
    out = {unpack(ARGV, 1, 7992)}
end

-- Which checks run.  The deadline of a group is in ms of this server's
-- clock (0: none); the edge node stops waiting then and takes its fail
-- path, so a group that runs later (a stalled server wakes up, a long
-- queue) must take nothing, or it spends quota for a request that was
-- never checked; its keys are not even read.  (Here each check goes by
-- its own deadline; that they agree within a group is checked below.)
local num = {}          -- digit string -> its value, or -1 if not digits
                        -- (kept only if there are more checks to come)
local nlate = 0
for i = 1, n do
    local s = ARGV[9 * i - 7]
    if s ~= '0' then
        local D = num[s]
        if not D then
            D = find(s, '^%d+$') and s + 0 or -1
            if n > 1 then num[s] = D end
        end
        if D > 0 and now > D then nlate = nlate + 1 end
    end
end

-- The values of the keys that run, v1 for a lone check, else vals[i]: a
-- string, false (no key) or a table, the fields of a hash of the old
-- layout, which carries on; any other type raises Redis's own WRONGTYPE
-- error here, before anything is written.
local vals, v1
if n == 1 then
    if nlate == 0 then
        v1 = redis.pcall('GET', KEYS[1])        -- false if there is no key
        if v1 and #v1 ~= 24 and #v1 ~= 32 and type(v1) == 'table' then
            v1 = redis.call('HMGET', KEYS[1], 'used', 'ts', 'win', 'cur',
                            'prev', 'w')
        end
    end
elseif nlate < n then
    -- One MGET; it answers false for a key that is not a string, so the
    -- keys it says nothing about are counted by one EXISTS and, only if
    -- some are there, read one by one.
    if nlate == 0 then
        vals = redis.call('MGET', unpack(KEYS))
    else
        local ix, keys = {}, {}
        for i = 1, n do
            local D = num[ARGV[9 * i - 7]]
            if not (D and D > 0 and now > D) then
                ix[#ix + 1] = i
                keys[#ix] = KEYS[i]
            end
        end
        local got = redis.call('MGET', unpack(keys))
        vals = {}
        for j = 1, #ix do vals[ix[j]] = got[j] end
    end
    local none = {}
    for i = 1, n do
        if vals[i] == false then none[#none + 1] = i end
    end
    if #none > 0 then
        local keys = {}
        for j = 1, #none do keys[j] = KEYS[none[j]] end
        if redis.call('EXISTS', unpack(keys)) > 0 then
            for j = 1, #none do
                local v = redis.pcall('GET', keys[j])
                if v and #v ~= 24 and #v ~= 32 and type(v) == 'table' then
                    v = redis.call('HMGET', keys[j], 'used', 'ts', 'win',
                                   'cur', 'prev', 'w')
                end
                vals[none[j]] = v
            end
        end
    end
end

-- raw[key]: the value a check of this call wrote (or will, when its group
-- passes); a later check of the call on that key decodes it exactly as it
-- would read it from Redis had the two been separate calls.
local raw = {}
-- The writes, in order: key, value before, value after, TTL (false:
-- KEEPTTL), four slots each; np in use.
local pend, np = {}, 0
-- The group being decided: its argument, its deadline (string and value),
-- whether it is late, its first check, whether it passes so far, np at its
-- start, whether a rule read names another algorithm than a check of it
-- was sent with; the groups before it.
local group, gdl, gD, late, g1, pass, gp, resend
local seen
-- The rules read: rules[field][policy_field] = {limit, window (s),
-- algorithm (0 none, 1 tb, 2 sw), window_ms}; read by the function made
-- when the first check that names a field needs it.
local rules, read_rule

-- Every argument is checked before anything is written; each check is
-- decided as soon as its own are.  Strictly digits: "1e3", "-1", "2.5",
-- " 5" or "" are caller bugs, and guessing what they meant could silently
-- give a wrong decision.  The round i = n + 1 only ends the last group.
for i = 1, n + 1 do
    local a, o = 9 * i - 9, 9 * i - 9
    local s = ARGV[a + 1]               -- nil after the last check
    if s ~= group then
        -- The group before ends here.  If it must be sent again, nothing
        -- of it is written and every check of it says -2.  If it failed,
        -- nothing of it is written, and its checks that allowed tell the
        -- state as it stays: decided again as cost 0 (which allows too:
        -- less is taken, and 1 <= cost), under the rule they were decided
        -- with.
        if (resend or pass == false) and np > gp then
            for j = np - 3, gp + 1, -4 do
                raw[pend[j]] = pend[j + 1]
            end
            np = gp
            if not resend then
                for ci = g1, i - 1 do
                    local co = 9 * ci - 9
                    if out[co + 1] == 1 then
                        local ca = 9 * ci - 9
                        local k = KEYS[ci]
                        local v = raw[k]
                        if v == nil then
                            if n == 1 then v = v1 else v = vals[ci] end
                        end
                        local L, W = out[co + 6], out[co + 7]
                        if L > 0 then
                            W = W * 1000
                        else
                            L, W = ARGV[ca + 4] + 0, ARGV[ca + 5] + 0
                        end
                        if ARGV[ca + 3] == 'tb' then
                            tb(co, v, L, W, 0)
                        else
                            sw(co, v, L, W, 0)
                        end
                    end
                end
            end
        end
        if resend then
            for ci = g1, i - 1 do
                local co = 9 * ci - 9
                out[co + 1], out[co + 2], out[co + 3], out[co + 4],
                    out[co + 5] = -2, 0, 0, 0, 0
            end
        end
        if not s then break end
        if not find(s, '^%d+$') then
            return redis.error_reply('ERR ratelimit: bad group (check ' .. i
                                     .. ')')
        end
        if group then
            if not seen then seen = {} end
            seen[group] = true
            if seen[s] then
                return redis.error_reply(
                    'ERR ratelimit: group not adjacent (check ' .. i .. ')')
            end
        end
        group, g1, pass, gp, resend = s, i, true, np, false
        gdl = ARGV[a + 2]
        gD = num[gdl]
        if not gD then
            gD = find(gdl, '^%d+$') and gdl + 0 or -1
            if n > 1 then num[gdl] = gD end
        end
        if gD < 0 then
            return redis.error_reply('ERR ratelimit: bad deadline (check '
                                     .. i .. ')')
        end
        late = gD > 0 and now > gD
    else
        s = ARGV[a + 2]
        if s ~= gdl then
            local D = num[s]
            if not D then D = find(s, '^%d+$') and s + 0 or -1 end
            if D < 0 then
                return redis.error_reply(
                    'ERR ratelimit: bad deadline (check ' .. i .. ')')
            end
            if D ~= gD then
                return redis.error_reply('ERR ratelimit: deadline differs '
                    .. 'within the group (check ' .. i .. ')')
            end
        end
    end
    local alg = ARGV[a + 3]
    if alg ~= 'tb' and alg ~= 'sw' then
        return redis.error_reply('ERR ratelimit: bad algorithm (check ' .. i
                                 .. ')')
    end
    s = ARGV[a + 4]
    local L = num[s]
    if not L then
        L = find(s, '^%d+$') and s + 0 or -1
        if n > 1 then num[s] = L end
    end
    if L < 1 or L > RL_MAX_LIMIT then
        return redis.error_reply('ERR ratelimit: bad limit (check ' .. i
                                 .. ')')
    end
    s = ARGV[a + 5]
    local W = num[s]
    if not W then
        W = find(s, '^%d+$') and s + 0 or -1
        if n > 1 then num[s] = W end
    end
    if W < RL_MIN_WINDOW_MS or W > RL_MAX_WINDOW_MS then
        return redis.error_reply('ERR ratelimit: bad window (check ' .. i
                                 .. ')')
    end
    s = ARGV[a + 6]
    local C = num[s]
    if not C then
        C = find(s, '^%d+$') and s + 0 or -1
        if n > 1 then num[s] = C end
    end
    if C < 0 or C > RL_MAX_LIMIT then
        return redis.error_reply('ERR ratelimit: bad cost (check ' .. i
                                 .. ')')
    end
    local mode = ARGV[a + 7]
    if mode ~= '0' and mode ~= '1' then
        return redis.error_reply('ERR ratelimit: bad mode (check ' .. i
                                 .. ')')
    end

    -- The rule in force, when the caller names its fields (its cache does
    -- not know it): read once per call for each pair of fields, it
    -- replaces the limit and window passed, and a rule that names another
    -- algorithm than the one passed (the key's name says the algorithm)
    -- sends the whole group back.  Nothing of this runs when the fields
    -- are empty, the usual case.
    s = ARGV[a + 8]
    if s == '' then
        if ARGV[a + 9] ~= '' then
            return redis.error_reply('ERR ratelimit: bad rule field (check '
                                     .. i .. ')')
        end
        out[o + 6], out[o + 7], out[o + 8], out[o + 9] = -1, -1, -1, -1
    elseif late then
        out[o + 6], out[o + 7], out[o + 8], out[o + 9] = -1, -1, -1, -1
    else
        local pf = ARGV[a + 9]
        if not rules then
            rules = {}
            -- A stored value as ngx_http_ratelimit_rule_parse() reads it:
            -- "<stamp> <limit> <window> <algorithm> [<expires>]", "~"
            -- before the limit when a write was undone back to it, the
            -- numbers within the bounds of a rule, the expiry in epoch
            -- seconds up to 9999-12-31T23:59:59Z (RL_RULE_MAX_EXPIRES);
            -- anything else ("-": deleted, garbled, out of bounds, none)
            -- and a rule expired by now is no rule.  The policy's rule if
            -- it is one, else the customer's, else none; the answer holds
            -- until the rule in force expires, or for good (ttl 0).
            local match, sub = string.match, string.sub
            local algs = {['-'] = 0, token_bucket = 1, sliding_window = 2}
            local none = {0, 0, 0, 0, 0}
            read_rule = function(field, pfield)
                local v, pv
                if pfield == '' then
                    -- (the key is not in KEYS: standalone Redis only)
                    v = redis.call('HGET', 'rl:rules', field)
                else
                    local got = redis.call('HMGET', 'rl:rules', field, pfield)
                    v, pv = got[1], got[2]
                end
                if not pv then pv, v = v, false end
                while pv do
                    local st, l, w, name, tail = match(pv,
                        '^(%d+) ~?([1-9]%d*) ([1-9]%d*) ([^ ]*)(.*)$')
                    local A = st and algs[name]
                    local ttl = 0
                    if A and tail ~= '' then
                        local ex = match(tail, '^ ([1-9]%d*)$')
                        if ex and #ex <= 12 and ex + 0 <= 253402300799 then
                            ttl = ex * 1000 - now
                        end
                        if ttl <= 0 then A = nil end
                    end
                    if A then
                        l, w = l + 0, w + 0
                        local ok = l <= RL_MAX_LIMIT
                                   and w * 1000 >= RL_MIN_WINDOW_MS
                                   and w * 1000 <= RL_MAX_WINDOW_MS
                        -- the C side takes stamps up to 2^64 - 7, any
                        -- number of leading zeros
                        if ok and #st >= 20 then
                            st = match(st, '^0*(.*)$')
                            if #st > 20 then
                                ok = false
                            elseif #st == 20 then
                                local hi = sub(st, 1, 10) + 0
                                ok = hi < 1844674407 or hi == 1844674407
                                     and sub(st, 11) + 0 <= 3709551609
                            end
                        end
                        if ok then return {l, w, A, w * 1000, ttl} end
                    end
                    pv, v = v, false
                end
                return none
            end
        end
        local byf = rules[s]
        if not byf then
            byf = {}
            rules[s] = byf
        end
        local ru = byf[pf]
        if not ru then
            ru = read_rule(s, pf)
            byf[pf] = ru
        end
        local A = ru[3]
        out[o + 6], out[o + 7], out[o + 8], out[o + 9] = ru[1], ru[2], A,
            ru[5]
        if ru[1] > 0 then L, W = ru[1], ru[4] end
        if A == 1 and alg ~= 'tb' or A == 2 and alg ~= 'sw' then
            resend = true
        end
    end

    if late then
        -- Past the deadline: not run, nothing read or written.
        out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] =
            -1, 0, 0, 0, 0
    elseif not resend then
        local k = KEYS[i]
        local old = raw[k]
        if old == nil then
            if n == 1 then old = v1 else old = vals[i] end
        end
        local nv, px
        if alg == 'tb' then
            nv, px = tb(o, old, L, W, C)
        else
            nv, px = sw(o, old, L, W, C)
        end
        if nv then
            -- Taken for now: a later check of the call on this key sees
            -- it; written once every argument is checked, unless its group
            -- fails.
            pend[np + 1], pend[np + 2], pend[np + 3], pend[np + 4] =
                k, old, nv, px
            np = np + 4
            if i < n then raw[k] = nv end
        elseif mode == '0' and out[o + 1] == 0 then
            pass = false                -- an enforced check denied
        end
    end
end

for j = 1, np, 4 do
    if pend[j + 3] then
        redis.call('SET', pend[j], pend[j + 2], 'PX', pend[j + 3])
    else
        redis.call('SET', pend[j], pend[j + 2], 'KEEPTTL')
    end
end

-- Every answer ends with now: the edge node learns this server's clock.
out[9 * n + 1] = now
return out
