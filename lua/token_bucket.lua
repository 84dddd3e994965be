-- Token bucket rate limiter (contract and maths: lua/README.md).
-- KEYS[1] = bucket key; ARGV[1] = limit (capacity); ARGV[2] = window_ms
-- (time to refill an empty bucket).  Returns
-- {allowed, remaining, retry_after_ms, reset_ms}.
--
-- State is the hash {used, ts}: `used` = tokens taken and not yet refilled
-- as of ms timestamp `ts`, so tokens = limit - used.  Storing the usage
-- rather than the token count makes a limit change behave like the sliding
-- window does: a raised limit grants its extra capacity at once, a lowered
-- one clamps the usage (tokens never go below 0).

-- Strictly digits: "1e3", "-1", "2.5" or "" are caller bugs, and guessing
-- what they meant could silently give a wrong decision.
local function arg_int(s, lo, hi)
    if type(s) ~= 'string' or not string.match(s, '^%d+$') then return nil end
    local n = tonumber(s)
    if n < lo or n > hi then return nil end
    return n
end

local L = arg_int(ARGV[1], 1, 1000000000)
if not L then return redis.error_reply('ERR ratelimit: bad limit') end
local W = arg_int(ARGV[2], 1000, 86400000)
if not W then return redis.error_reply('ERR ratelimit: bad window') end
if #KEYS ~= 1 then return redis.error_reply('ERR ratelimit: need one key') end
local key = KEYS[1]

-- Server clock in whole ms.  Flooring is what keeps retry_after honest: a
-- caller that waits retry_after real ms reads a clock at least that much
-- further on.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A hash field we cannot trust (missing, not a number, NaN/inf, out of
-- range) makes the whole state void: the key is then treated as fresh.
local f = redis.call('HMGET', key, 'used', 'ts')
local used, ts = tonumber(f[1]), tonumber(f[2])
-- A ts more than a window ahead is no plausible clock step: garbage.
if not (used and ts and used >= 0 and used <= 1000000000
        and ts >= 0 and ts <= now + W and ts == math.floor(ts)) then
    used, ts = 0, now
end
-- Judge the old usage against the current limit.
if used > L then used = L end

-- Usage left from u after e ms of refill.  A whole window refills any
-- bucket, which also caps the refill arithmetic.  Every decision and every
-- time we promise goes through this one monotone function, so what we
-- promise is exactly what a later call will compute.
local function drain(u, e)
    if e >= W then return 0 end
    u = u - e * L / W
    if u < 0 then return 0 end
    return u
end

-- Smallest whole e >= 0 with drain(u, e) <= target (target >= 0, so e = W
-- always qualifies).  The closed form can be a ulp off either way; the
-- guard steps fix that.  They are bounded so that no inconsistency could
-- ever spin inside Redis; falling back to W stays honest.
local function first_ms(u, target)
    if u <= target then return 0 end
    local e = math.ceil((u - target) * W / L)
    if e < 1 then e = 1 end
    if e > W then e = W end
    for _ = 1, 3 do
        if drain(u, e) > target then e = e + 1 end
    end
    if drain(u, e) > target then return W end
    for _ = 1, 3 do
        if e > 1 and drain(u, e - 1) <= target then e = e - 1 end
    end
    return e
end

-- A clock that stepped back (failover) gives no refill rather than a
-- negative one.
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
local u = drain(used, elapsed)

if u + 1 <= L then
    u = u + 1
    local reset = first_ms(u, 0)
    redis.call('HSET', key, 'used', string.format('%.17g', u),
               'ts', string.format('%d', now))
    -- Once refilled the key is identical to an absent one: let it go then.
    redis.call('PEXPIRE', key, reset)
    local remaining = math.floor(L - u)
    if remaining < 0 then remaining = 0 end
    return {1, remaining, 0, reset}
end

-- Denied: nothing is written, so the stored state (and its TTL) stays as
-- the last allowed request left it, and the times below are measured from
-- its ts exactly as the next call will measure them.
local retry = ts + first_ms(used, L - 1) - now
if retry < 1 then retry = 1 end
local reset = ts + first_ms(used, 0) - now
-- Denied means less than one whole token left: remaining is 0.
return {0, 0, retry, reset}
