-- Fuzz of lua/check.lua and lua/refund.lua against a fake clock, run
-- inside Redis by t/003-lua-scripts.t: the scripts' bodies (with the bounds
-- lines) are put where the @...@ lines are, inside functions that get a
-- fake `redis` (TIME from a clock the fuzz sets, keys in a Lua table with
-- TTLs on that clock).  So every promise can be checked to the ms, which
-- real time cannot do:
--
-- - a check of cost 1 answers and writes exactly what the old scripts
--   (t/lib/reference/token_bucket.lua, sliding_window.lua: the module's
--   one-check scripts before check.lua, kept as the reference) do; one of
--   cost c exactly what
--   c of theirs at the same ms do together;
-- - denied: retry_ms later the same check passes, 1 ms earlier it does not;
--   a cost above the limit says the window;
-- - remaining: that many units pass now, one more does not;
-- - t_ms: within the window; denied: retry_ms; allowed: remaining + 1
--   units pass t_ms later and not 1 ms earlier (unless t_ms is the window,
--   where the true time may be later still);
-- - reset_ms: the whole limit passes then and not 1 ms earlier; a key
--   written expires exactly then;
-- - a denial writes nothing;
-- - a call of several groups answers and writes exactly what separate
--   single-check calls make of it (a group passes iff its enforced checks
--   allow one after another; a failed group writes nothing and its allowed
--   checks answer as cost 0 would);
-- - with rules in rl:rules (valid, deleted, undone, garbled, out of
--   bounds, stamps at the edge of 64 bits): a check that names its rule
--   fields answers the rule as a port of the C parser
--   (ngx_http_ratelimit_rule_parse, rl_rule_decode) reads it, and decides
--   exactly as a check passed the rule's limit, window and algorithm; a
--   rule naming another algorithm makes its group answer -2 and write
--   nothing; each pair of fields is read once per call (HGET without a
--   policy field, HMGET with one), and nothing when no field is named;
-- - take, then refund: every later decision is as if never taken.
--
-- ARGV: seed, rounds.  Returns {checks made, failures, message...}.

local seed, rounds = tonumber(ARGV[1]), tonumber(ARGV[2])
math.randomseed(seed)
local random = math.random
local floor = math.floor

------------------------------------------------------------------------
-- The fake Redis
------------------------------------------------------------------------

local db                -- {clock = ms, keys = {key -> entry}}
local WRONG = 'WRONGTYPE Operation against a key holding the wrong kind'
local calls = 0
local reads = {}        -- command -> how many times the rules were read

local function entry(k)
    local e = db.keys[k]
    if e and e.exp and db.clock >= e.exp then
        db.keys[k] = nil
        return nil
    end
    return e
end

local function exec(cmd, a)
    if cmd == 'TIME' then
        -- whole seconds and microseconds, anywhere inside the ms
        local s = (db.clock - db.clock % 1000) / 1000
        return {string.format('%d', s),
                string.format('%d', db.clock % 1000 * 1000 + random(0, 999))}
    elseif cmd == 'GET' then
        local e = entry(a[1])
        if not e then return false end
        if e.t ~= 's' then return {err = WRONG} end
        return e.v
    elseif cmd == 'MGET' then
        local r = {}
        for i = 1, #a do
            local e = entry(a[i])
            r[i] = e and e.t == 's' and e.v or false
        end
        return r
    elseif cmd == 'EXISTS' then
        local c = 0
        for i = 1, #a do
            if entry(a[i]) then c = c + 1 end
        end
        return c
    elseif cmd == 'HGET' then
        if a[1] == 'rl:rules' then reads.HGET = (reads.HGET or 0) + 1 end
        if #a ~= 2 then error('HGET of ' .. #a .. ' arguments') end
        local e = entry(a[1])
        if e and e.t ~= 'h' then return {err = WRONG} end
        return e and e.v[a[2]] or false
    elseif cmd == 'HMGET' then
        if a[1] == 'rl:rules' then reads.HMGET = (reads.HMGET or 0) + 1 end
        local e = entry(a[1])
        if e and e.t ~= 'h' then return {err = WRONG} end
        local r = {}
        for i = 2, #a do r[i - 1] = e and e.v[a[i]] or false end
        return r
    elseif cmd == 'SET' then
        local k, v = a[1], a[2]
        if type(k) ~= 'string' or type(v) ~= 'string' then
            error('SET of a non-string')
        end
        local e = entry(k)
        local exp
        if a[3] == 'PX' then
            if type(a[4]) ~= 'string' or not string.find(a[4], '^%d+$')
                    or a[4] + 0 < 1 then
                error('SET with a bad PX: ' .. tostring(a[4]))
            end
            exp = db.clock + a[4]
        elseif a[3] == 'KEEPTTL' then
            exp = e and e.exp
        elseif a[3] ~= nil then
            error('SET with ' .. tostring(a[3]))
        end
        db.keys[k] = {t = 's', v = v, exp = exp}
        return {ok = 'OK'}
    end
    error('fake redis: no ' .. tostring(cmd))
end

local fake = {}
function fake.call(cmd, ...)
    calls = calls + 1
    local r = exec(cmd, {...})
    if type(r) == 'table' and r.err then error(r.err) end
    return r
end
function fake.pcall(cmd, ...)
    calls = calls + 1
    return exec(cmd, {...})
end
function fake.error_reply(m) return {err = m} end

local function make_check(redis) return function(KEYS, ARGV)
-- @check@
end end

local function make_refund(redis) return function(KEYS, ARGV)
-- @refund@
end end

local function make_tb(redis) return function(KEYS, ARGV)
-- @token_bucket@
end end

local function make_sw(redis) return function(KEYS, ARGV)
-- @sliding_window@
end end

local check_body = make_check(fake)
local refund_body = make_refund(fake)
local old_body = {tb = make_tb(fake), sw = make_sw(fake)}

------------------------------------------------------------------------
-- Helpers
------------------------------------------------------------------------

local checks, failures, messages = 0, 0, {}
local where = ''

local function fail(what)
    failures = failures + 1
    if #messages < 25 then messages[#messages + 1] = where .. ': ' .. what end
end

local function copy(d)
    local keys = {}
    for k, e in pairs(d.keys) do keys[k] = {t = e.t, v = e.v, exp = e.exp} end
    return {clock = d.clock, keys = keys}
end

local function on(d, f, keys, argv)
    local saved = db
    db = d
    local ok, r = pcall(f, keys, argv)
    db = saved
    if not ok then
        fail('raised ' .. tostring(r))
        return nil
    end
    if type(r) == 'table' and r.err then
        fail('error ' .. r.err)
        return nil
    end
    return r
end

local function s(x) return string.format('%d', x) end

-- check.lua with one check on d, its rule not read; the reply (9
-- numbers) or nil.
local function one(d, alg, key, L, W, c, mode)
    checks = checks + 1
    return on(d, check_body, {key},
              {'1', '0', alg, s(L), s(W), s(c), mode or '0', '', ''})
end

-- the decision of that check on a copy of d at another time, TTLs
-- aside: what the promises are about is the state.  (A key written under
-- another limit may expire before its state says it is full: the caveat
-- in lua/README.md, in the caller's favour; a key written by the check
-- itself expires exactly at reset, checked apart.)
local function allowed_at(d, clock, alg, key, L, W, c)
    local x = copy(d)
    for _, e in pairs(x.keys) do e.exp = nil end
    x.clock = clock
    local r = one(x, alg, key, L, W, c)
    return r and r[1]
end

local function same_key(a, b, key)
    local x, y = a.keys[key], b.keys[key]
    -- as of the later clock: an expired key is no key
    local c = a.clock > b.clock and a.clock or b.clock
    if x and x.exp and c >= x.exp then x = nil end
    if y and y.exp and c >= y.exp then y = nil end
    if not x or not y then return not x and not y end
    return x.t == y.t and x.v == y.v and x.exp == y.exp
end

-- a key's entry, decoded
local function dump(d, key)
    local e = d.keys[key]
    if not e then return 'none' end
    local t = {}
    if e.t == 'h' then
        for f, v in pairs(e.v) do t[#t + 1] = f .. '=' .. v end
    elseif #e.v == 24 then
        local a, b, c = struct.unpack('<ddd', e.v)
        t = {'ts=' .. s(a - d.clock), 'u=' .. s(b), 'w=' .. s(c)}
    elseif #e.v == 32 then
        local a, b, c, w = struct.unpack('<dddd', e.v)
        t = {'win=' .. s(a - floor(d.clock / w)), 'cur=' .. s(b),
             'prev=' .. s(c), 'w=' .. s(w)}
    else
        t = {'#' .. #e.v}
    end
    if e.exp then t[#t + 1] = 'exp=' .. s(e.exp - d.clock) end
    return e.t .. '{' .. table.concat(t, ' ') .. '}'
end

local function show(r)
    if not r then return 'nil' end
    local t = {}
    for i = 1, #r do t[i] = s(r[i]) end
    return '{' .. table.concat(t, ',') .. '}'
end

local function pick_L()
    local r = random(1, 20)
    if r <= 10 then return random(1, 12) end
    if r <= 16 then return random(1, 1000) end
    if r <= 18 then return random(1, 1000000) end
    if r == 19 then return random(1, 1000) * 1000000 end
    return 1000000000
end

local function pick_W()
    local r = random(1, 20)
    if r <= 12 then return random(1, 10) * 1000 end
    if r <= 18 then return random(1000, 100000) end
    if r == 19 then return random(1000, 86400) * 1000 end
    return 86400000
end

local function pick_cost(L)
    local r = random(1, 10)
    if r <= 4 then return 1 end
    if r == 5 then return 0 end
    if r == 6 then return L end
    if r == 7 then
        if L + 3 > 1000000000 then return 1000000000 end
        return L + random(1, 3)
    end
    if L <= 1 then return 1 end
    return random(2, L)
end

-- A key with a history: checks at various times, a limit or window
-- changed, the clock stepped back, an old hash or garbage.
-- (clean: none of the last three, for the refund: what is given back is
-- exact only for a clock that runs forward and an unchanged rule.)
local function history(d, alg, key, L, W, clean)
    for _ = 1, random(0, 12) do
        local r = random(1, clean and 14 or 20)
        if r <= 6 then
            d.clock = d.clock + random(0, 30)
        elseif r <= 12 then
            d.clock = d.clock + random(0, W)
        elseif r <= 14 then
            d.clock = d.clock + random(0, 3 * W)
        elseif r == 15 then
            d.clock = d.clock - random(0, W + W / 2)
        end
        local l, w = L, W
        r = random(1, 20)
        if clean then
        elseif r == 1 then l = pick_L() elseif r == 2 then w = pick_W() end
        one(d, alg, key, l, w, pick_cost(l))
    end
    if clean then return end
    local r = random(1, 40)
    local idx = floor(d.clock / W)
    if r == 1 then
        d.keys[key] = {t = 's', v = string.rep('x', alg == 'tb' and 24 or 32)}
    elseif r == 2 and alg == 'tb' then
        d.keys[key] = {t = 'h', v = {used = s(random(0, L)) .. '.'
                                            .. s(random(0, 999)),
                                     ts = s(d.clock - random(0, W))}}
    elseif r == 2 then
        d.keys[key] = {t = 'h', v = {win = s(idx - random(0, 2)),
                                     cur = s(random(0, L)),
                                     prev = s(random(0, L)), w = s(W)}}
    elseif r == 3 and alg == 'tb' then
        d.keys[key] = {t = 's', v = struct.pack('<ddd', d.clock - random(0, W),
                                                floor(random() * L * W), W)}
    elseif r == 3 then
        d.keys[key] = {t = 's', v = struct.pack('<dddd', idx - random(0, 1),
                                                random(0, L), random(0, L), W)}
    end
end

------------------------------------------------------------------------
-- One check, every promise
------------------------------------------------------------------------

local function single(round)
    where = 'round ' .. round .. ' history'
    local alg = random(1, 2) == 1 and 'tb' or 'sw'
    local L, W = pick_L(), pick_W()
    local exact = L * W < 2 ^ 53
    db = {clock = 1700000000000 + random(0, 100000000), keys = {}}
    local d = db
    history(d, alg, 'k', L, W)
    local c = pick_cost(L)
    local need = c < 1 and 1 or c
    local T = d.clock
    where = string.format('round %d: %s L=%d W=%d cost=%d at %d %s', round,
                          alg, L, W, c, T, dump(d, 'k'))
    local pre = copy(d)
    local res = one(d, alg, 'k', L, W, c)
    if not res then return end
    where = where .. ' ' .. show(res)
    local post = d
    local a, r, retry, reset, t, now = res[1], res[2], res[3], res[4], res[5],
                                       res[10]
    if now ~= T then fail('now ' .. s(now)) end
    if #res ~= 10 or res[6] ~= -1 or res[7] ~= -1 or res[8] ~= -1
            or res[9] ~= -1 then
        fail('rule fields empty, yet the rule says read')
    end
    if a ~= 0 and a ~= 1 then fail('allowed') return end
    if r < 0 or reset < 0 or t < 1 or a == 1 and t > W then
        fail('a number out of range')
    end

    -- the old scripts: c of theirs at the same ms
    if c >= 1 and c <= 50 then
        local o = copy(pre)
        local got = 0
        local last
        for _ = 1, c do
            last = on(o, old_body[alg], {'k'}, {s(L), s(W)})
            if not last then return end
            got = got + last[1]
        end
        if a == 1 then
            if got ~= c then fail('old scripts did not allow all ' .. s(c)) end
            if not same_key(o, post, 'k') then
                fail('wrote other than the old scripts')
            end
            if c == 1 and (last[2] ~= r or last[4] ~= reset) then
                fail('old scripts said ' .. show(last))
            end
        else
            if got == c then fail('old scripts allowed all ' .. s(c)) end
            if c == 1 and (last[2] ~= r or last[3] ~= retry
                           or last[4] ~= reset) then
                fail('old scripts said ' .. show(last))
            end
        end
    end

    if a == 0 then
        if retry < 1 then fail('denied without retry') end
        if t ~= retry then fail('t is not retry') end
        if not same_key(pre, post, 'k') then fail('a denial wrote') end
        if need > L then
            if retry ~= W then fail('cost above the limit: retry not W') end
        else
            if allowed_at(post, T + retry, alg, 'k', L, W, need) ~= 1 then
                fail('denied at retry')
            end
            -- (past 2^53 a large cost's retry may be a few ms late: the
            -- sums round by more than a ms there)
            if retry > 1 and (exact or need == 1)
                    and allowed_at(post, T + retry - 1, alg, 'k', L, W, need)
                        ~= 0 then
                fail('allowed 1 ms before retry')
            end
        end
    else
        if retry ~= 0 then fail('allowed with a retry') end
        if r + 1 <= L and exact then
            if t < W and allowed_at(post, T + t, alg, 'k', L, W, r + 1) ~= 1 then
                fail('remaining + 1 denied at t')
            end
            if t > 1 and allowed_at(post, T + t - 1, alg, 'k', L, W, r + 1)
                    ~= 0 then
                fail('remaining + 1 allowed before t')
            end
        elseif r + 1 > L and t ~= W then
            fail('remaining is the limit but t is not the window')
        end
        -- the TTL of what was written
        local e = post.keys.k
        if c > 0 and e and e.exp and e.exp ~= T + reset then
            fail('expires in ' .. s(e.exp - T) .. ', not at reset')
        end
        if c == 0 and not same_key(pre, post, 'k') then
            fail('cost 0 wrote')
        end
    end

    if exact and r < 1000000000 then
        if r > 0 and allowed_at(post, T, alg, 'k', L, W, r) ~= 1 then
            fail('remaining do not pass')
        end
        if allowed_at(post, T, alg, 'k', L, W, r + 1) ~= 0 then
            fail('more than remaining pass')
        end
    end
    if allowed_at(post, T + reset, alg, 'k', L, W, L) ~= 1 then
        fail('not full at reset')
    end
    if exact and reset > 0
            and allowed_at(post, T + reset - 1, alg, 'k', L, W, L) ~= 0 then
        fail('full before reset')
    end
end

------------------------------------------------------------------------
-- Rules: the C side's reading, ported byte by byte
------------------------------------------------------------------------

-- a > b for strings of digits without leading zeros
local function digits_above(a, b)
    if #a ~= #b then return #a > #b end
    for i = 1, #a do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then return x > y end
    end
    return false
end

-- A stored value as ngx_http_ratelimit_rule_parse() and rl_rule_decode()
-- read it, a byte at a time as they do: limit, window (s), algorithm, or
-- nil for no rule (absent, deleted, garbled).  The bounds are those of
-- src/rl_rule.h.
local function c_rule(v, T)
    if not v then return nil end
    local byte, len, p = string.byte, #v, 1
    local function digit(at)
        local c = byte(v, at)
        return c and c >= 48 and c <= 57
    end
    -- the stamp: a uint64_t that must not overflow
    if not digit(p) then return nil end
    local n = ''
    while p <= len and digit(p) do
        if digits_above(n, '1844674407370955160') then return nil end
        if n ~= '' or byte(v, p) ~= 48 then n = n .. string.sub(v, p, p) end
        p = p + 1
    end
    if p > len or byte(v, p) ~= 32 then return nil end
    p = p + 1
    if p <= len and byte(v, p) == 126 then p = p + 1 end
    if len - p + 1 == 1 and byte(v, p) == 45 then return nil end
    local function number(max)
        local c = byte(v, p)
        if not c or c < 49 or c > 57 then return nil end
        local x = 0
        while p <= len and digit(p) do
            x = x * 10 + byte(v, p) - 48
            p = p + 1
            if x > max then return nil end
        end
        return x
    end
    local limit = number(1000000000)
    if not limit or p > len or byte(v, p) ~= 32 then return nil end
    p = p + 1
    local window = number(86400)
    if not window or p > len or byte(v, p) ~= 32 then return nil end
    p = p + 1
    local rest = string.sub(v, p)
    -- an expiry after the algorithm: epoch seconds, no leading zero, up to
    -- 9999-12-31T23:59:59Z; the rule is none once the clock reaches it
    local ttl = 0
    local sp = string.find(rest, ' ', 1, true)
    if sp then
        local ex = string.sub(rest, sp + 1)
        rest = string.sub(rest, 1, sp - 1)
        if not string.find(ex, '^[1-9]%d*$') or #ex > 12
                or ex + 0 > 253402300799 then
            return nil
        end
        ttl = ex * 1000 - T
        if ttl <= 0 then return nil end
    end
    local alg = rest == '-' and 0 or rest == 'token_bucket' and 1
                or rest == 'sliding_window' and 2
    if not alg then return nil end
    return limit, window, alg, ttl
end

-- A value for rl:rules: rules (some undone back to), deleted, garbled,
-- out of bounds, stamps about 2^64, or nil (absent).
local function pick_rule_value()
    local stamp = s(random(0, 1000000))
    local L = random(1, 10) <= 7 and random(1, 8) or pick_L()
    local W = random(1, 10) <= 8 and random(1, 5) or random(1, 86400)
    local A = random(1, 2) == 1 and '-'
              or random(1, 2) == 1 and 'token_bucket' or 'sliding_window'
    local body = s(L) .. ' ' .. s(W) .. ' ' .. A
    -- an expiry about the fake clock's (1700000000 s and up to 100000 s
    -- on): passed, ahead, or garbled
    local e = random(1, 6)
    if e == 1 then
        body = body .. ' ' .. s(1700000000 + random(-10, 100010))
    elseif e == 2 then
        local odd = {'0', '01', '253402300800', '1 2', '', 'x', '253402300799'}
        body = body .. ' ' .. odd[random(1, #odd)]
    end
    local r = random(1, 20)
    if r <= 8 then
        return stamp .. ' ' .. body
    elseif r <= 10 then
        return stamp .. ' ~' .. body
    elseif r == 11 then
        return stamp .. ' -'
    elseif r == 12 then
        return stamp .. ' ~-'
    elseif r == 13 then
        local big = {'18446744073709551609', '18446744073709551610',
                     '18446744073709551599', '18446744073709551615',
                     '99999999999999999999', '1844674407370955161',
                     '184467440737095516090', '28446744073709551609',
                     '18446744063709551619'}
        return string.rep('0', random(0, 2)) .. big[random(1, #big)] .. ' '
               .. body
    elseif r == 14 then
        local out = {'0 5 -', '1000000001 5 -', '5 0 -', '5 86401 -',
                     '05 5 -', '5 05 -', '99999999999999999999999 5 -',
                     '1000000000 86400 sliding_window', '1 1 -',
                     '5 864000000000000000000000 -', '-5 5 -'}
        return stamp .. ' ' .. out[random(1, #out)]
    elseif r == 15 then
        local bad = {'', ' ', stamp, stamp .. ' ', stamp .. ' ~', 'x ' .. body,
                     stamp .. '  ' .. body, stamp .. ' ' .. body .. ' ',
                     stamp .. ' ~~' .. body, stamp .. ' ' .. s(L) .. ' '
                     .. s(W), stamp .. ' ' .. s(L) .. ' ' .. s(W) .. ' TB',
                     stamp .. ' -x', '-', stamp .. ' ' .. body .. '\0',
                     ' ' .. stamp .. ' ' .. body, stamp .. ' ~ ' .. body,
                     stamp .. ' ' .. s(L) .. ' ' .. s(W) .. ' -\n',
                     stamp .. '\t' .. body, stamp .. ' ' .. s(L) .. ' '
                     .. s(W) .. ' token_bucket_'}
        return bad[random(1, #bad)]
    end
    return nil
end

------------------------------------------------------------------------
-- Groups: one call against single-check calls
------------------------------------------------------------------------

local function groups(round)
    where = 'round ' .. round .. ' history'
    local keys, algs, Ls, Ws = {'a', 'b', 'c'}, {}, {}, {}
    db = {clock = 1700000000000 + random(0, 100000000), keys = {}}
    local d = db
    for j, k in ipairs(keys) do
        algs[k] = random(1, 2) == 1 and 'tb' or 'sw'
        Ls[k] = random(1, 10) <= 8 and random(1, 8) or pick_L()
        Ws[k] = random(1, 5) * 1000
        history(d, algs[k], k, Ls[k], Ws[k])
        d.clock = d.clock + random(0, 20)
    end
    -- the rules of two customers, for every policy and for two policies;
    -- in half the rounds no check names them
    local with_rules = random(1, 2) == 1
    if with_rules and random(1, 10) > 1 then
        local h = {}
        for _, c in ipairs({'c1', 'c2'}) do
            h[c] = pick_rule_value()
            h[c .. '\31p1'] = pick_rule_value()
            h[c .. '\31p2'] = pick_rule_value()
        end
        d.keys['rl:rules'] = {t = 'h', v = h}
    end
    local T = d.clock
    -- the call: groups of checks on the three keys
    local ks, argv, plan = {}, {}, {}
    for g = 1, random(1, 4) do
        local dl = '0'
        local r = random(1, 8)
        if r == 1 then dl = s(T - random(1, 100)) elseif r == 2 then dl = s(T + 100) end
        if r == 3 then dl = s(T) end
        for _ = 1, random(1, 3) do
            local k = keys[random(1, 3)]
            local alg = algs[k]
            if random(1, 30) == 1 then alg = alg == 'tb' and 'sw' or 'tb' end
            local c = random(1, 4) == 1 and pick_cost(Ls[k]) or random(0, 3)
            local mode = random(1, 5) == 1 and '1' or '0'
            local f, pf = '', ''
            if with_rules and random(1, 3) > 1 then
                f = 'c' .. random(1, 2)
                if random(1, 3) > 1 then pf = f .. '\31p' .. random(1, 2) end
            end
            ks[#ks + 1] = k
            plan[#plan + 1] = {g = g, late = dl ~= '0' and T > dl + 0,
                               k = k, alg = alg, L = Ls[k], W = Ws[k], c = c,
                               mode = mode, f = f, pf = pf}
            for _, x in ipairs({s(g), dl, alg, s(Ls[k]), s(Ws[k]), s(c), mode,
                                f, pf}) do
                argv[#argv + 1] = x
            end
        end
    end
    where = string.format('round %d: groups, %d checks', round, #plan)
    local pre = copy(d)
    checks = checks + 1
    reads = {}
    local res = on(d, check_body, ks, argv)
    local got_reads = reads
    if not res then return end
    if #res ~= 9 * #plan + 1 then fail('reply of ' .. #res) return end

    -- the rules, as the C side reads them: the policy's if it is a rule,
    -- else the customer's; and the reads the call should make, one per
    -- pair of fields named in a group that runs
    local h = pre.keys['rl:rules'] and pre.keys['rl:rules'].v or {}
    local want_reads, pairs_seen = {HGET = 0, HMGET = 0}, {}
    for _, p in ipairs(plan) do
        p.rule = {-1, -1, -1, -1}
        if p.f ~= '' and not p.late then
            local l, w, a, ttl
            if p.pf ~= '' then l, w, a, ttl = c_rule(h[p.pf], T) end
            if not l then l, w, a, ttl = c_rule(h[p.f], T) end
            p.rule = l and {l, w, a, ttl} or {0, 0, 0, 0}
            local pair = p.f .. '|' .. p.pf
            if not pairs_seen[pair] then
                pairs_seen[pair] = true
                local cmd = p.pf == '' and 'HGET' or 'HMGET'
                want_reads[cmd] = want_reads[cmd] + 1
            end
            -- the limit a check is decided with
            if l then p.L, p.W = l, w * 1000 end
            if a == 1 and p.alg ~= 'tb' or a == 2 and p.alg ~= 'sw' then
                p.resend = true
            end
        end
    end
    for cmd, n in pairs(want_reads) do
        if (got_reads[cmd] or 0) ~= n then
            fail(string.format('%d %s of rl:rules, not %d', got_reads[cmd] or 0,
                               cmd, n))
        end
    end

    -- the same, check by check
    local ref = copy(pre)
    local want = {}
    local i = 1
    while i <= #plan do
        local j = i
        local resend = plan[i].resend
        while j < #plan and plan[j + 1].g == plan[i].g do
            j = j + 1
            resend = resend or plan[j].resend
        end
        if plan[i].late then
            for x = i, j do want[x] = {-1, 0, 0, 0, 0} end
        elseif resend then
            for x = i, j do want[x] = {-2, 0, 0, 0, 0} end
        else
            local scratch = copy(ref)
            local pass = true
            for x = i, j do
                local p = plan[x]
                local r = one(scratch, p.alg, p.k, p.L, p.W, p.c)
                if not r then return end
                want[x] = r
                if r[1] == 0 and p.mode == '0' then pass = false end
            end
            if pass then
                ref = scratch
            else
                for x = i, j do
                    local p = plan[x]
                    if want[x][1] == 1 then
                        want[x] = one(copy(ref), p.alg, p.k, p.L, p.W, 0)
                        if not want[x] then return end
                    end
                end
            end
        end
        for x = i, j do
            want[x][6], want[x][7], want[x][8], want[x][9] =
                plan[x].rule[1], plan[x].rule[2], plan[x].rule[3],
                plan[x].rule[4]
        end
        i = j + 1
    end
    local function show_plan()
        local p = {}
        for x = 1, #plan do
            local q = plan[x]
            p[x] = string.format('%d:%s%s %s L=%d W=%d c=%d%s%s', q.g, q.k,
                q.late and '(late)' or '', q.alg, q.L, q.W, q.c,
                q.mode == '1' and ' dry' or '',
                q.f ~= '' and ' rule ' .. q.f .. (q.pf ~= '' and '/'
                    .. string.gsub(q.pf, '\31', '/') or '') .. '='
                    .. show(q.rule) or '')
        end
        return table.concat(p, '; ')
    end
    for x = 1, #plan do
        for f = 1, 9 do
            if res[9 * x - 9 + f] ~= want[x][f] then
                local got = {}
                for y = 1, 9 do got[y] = res[9 * x - 9 + y] end
                fail(string.format('check %d: %s, single calls say %s | %s',
                    x, show(got), show({unpack(want[x], 1, 9)}), show_plan()))
                break
            end
        end
    end
    if res[9 * #plan + 1] ~= T then fail('now') end
    for _, k in ipairs(keys) do
        if not same_key(ref, d, k) then
            fail('key ' .. k .. ' differs: ' .. dump(ref, k) .. ' vs '
                 .. dump(d, k) .. ', before ' .. dump(pre, k) .. ' | '
                 .. show_plan() .. ' | ' .. show(res))
        end
    end
end

------------------------------------------------------------------------
-- Refund: take, then give back
------------------------------------------------------------------------

local function refund(round)
    where = 'round ' .. round .. ' history'
    local alg = random(1, 2) == 1 and 'tb' or 'sw'
    local L, W = random(1, 30), random(1, 5) * 1000
    db = {clock = 1700000000000 + random(0, 100000000), keys = {}}
    local d = db
    history(d, alg, 'k', L, W, true)
    local T = d.clock
    local c = random(1, L)
    where = string.format('round %d: refund %s L=%d W=%d cost=%d at %d',
                          round, alg, L, W, c, T)
    local ref = copy(d)             -- never taken
    local res = one(d, alg, 'k', L, W, c)
    if not res or res[1] ~= 1 then return end
    -- (a sliding window taken while the clock stood behind the stored
    -- window, after it stepped back, is not given back right: the refund
    -- cannot tell; lua/README.md)
    if alg == 'sw' and struct.unpack('<dddd', d.keys.k.v) * W > T then
        return
    end
    local between = false
    -- (sliding window) a check in between, in this window or later ones,
    -- where it decides alike with and without the take
    if alg == 'sw' and random(1, 2) == 1 then
        local dt = random(0, 2 * W)
        local c1 = random(0, 2)
        d.clock = T + dt
        ref.clock = T + dt
        local x = one(d, alg, 'k', L, W, c1)
        local y = one(ref, alg, 'k', L, W, c1)
        if not x or not y or x[1] ~= y[1] then return end
        between = true
    end
    d.clock = d.clock + random(0, W)
    ref.clock = d.clock
    local rf = on(d, refund_body, {'k'}, {alg, s(L), s(W), s(c), s(T)})
    if not rf then return end
    if rf[2] ~= d.clock then fail('refund now') end
    local alive = d.keys.k and (not d.keys.k.exp or d.clock < d.keys.k.exp)
    if not between and rf[1] ~= (alive and 1 or 0) then
        fail('refunded ' .. s(rf[1]))
    end
    for _ = 1, 6 do
        local at = d.clock + random(0, 2 * W)
        local k = random(1, L)
        local x = allowed_at(d, at, alg, 'k', L, W, k)
        local y = allowed_at(ref, at, alg, 'k', L, W, k)
        if x ~= y then
            fail(string.format('refunded %d: cost %d at +%d decides %s, '
                               .. 'never taken %s', rf[1], k, at - T,
                               tostring(x), tostring(y)))
            return
        end
    end
end

for round = 1, rounds do
    local r = random(1, 10)
    if r <= 6 then
        single(round)
    elseif r <= 8 then
        groups(round)
    else
        refund(round)
    end
end

local out = {checks, failures}
for _, m in ipairs(messages) do out[#out + 1] = m end
return out
