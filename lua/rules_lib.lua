-- Shared by the rules scripts: sent in front of each of them.
--
-- A stored rule is "<stamp> <body>", the body being "<limit> <window>
-- <algorithm>", "-" (deleted), or "~" and the body in force before a write
-- that was undone (see rules_restore.lua).
--
-- Values are ordered by stamp, then by the rest of the value byte by byte,
-- where "~" comes after digits and "-": the order is total and the same on
-- every shard, so an undone write beats the write itself, and two writes
-- with equal stamps settle on the same winner wherever they meet.  (Lua's
-- own string comparison follows the server's locale: not used.)
--
-- Each shard keeps a digest of its rules beside them (an XOR of one hash per
-- entry, so it is updated per write and does not depend on order): shards
-- whose versions are equal but whose rules differ show it to the poll.  And
-- an index, the sorted set rl:rules:index of every field (score 0), which
-- lists them in byte order a page at a time (rules_list.lua).

local RL_DIGEST = KEYS[1] .. ':digest'
local RL_ZERO = string.rep('0', 32)

local function rl_split(value)
    local stamp, rest = string.match(value, '^(%d+) (.+)$')
    return tonumber(stamp), rest
end

local function rl_bytes_after(a, b)
    local n = math.min(#a, #b)
    for i = 1, n do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then
            return x > y
        end
    end
    return #a > #b
end

-- true when value a comes after value b; anything comes after no value, a
-- well-formed value after a garbled one, and garbled ones byte by byte
local function rl_after(a, b)
    if not b then
        return true
    end
    local sa, ra = rl_split(a)
    local sb, rb = rl_split(b)
    if not sb then
        return sa ~= nil or rl_bytes_after(a, b)
    end
    if not sa then
        return false
    end
    if sa ~= sb then
        return sa > sb
    end
    return rl_bytes_after(ra, rb)
end

local function rl_hash(digest, id, value)
    local h = redis.sha1hex(id .. '\n' .. value)
    local out = {}
    for i = 0, 3 do
        local d = tonumber(string.sub(digest, i * 8 + 1, i * 8 + 8), 16)
        local e = tonumber(string.sub(h, i * 8 + 1, i * 8 + 8), 16)
        out[#out + 1] = bit.tohex(bit.bxor(d, e), 8)
    end
    return table.concat(out)
end

-- the digest, made from every entry when missing (rules stored by an older
-- version of the module, or none yet)
local function rl_digest()
    local digest = redis.call('GET', RL_DIGEST)
    if digest and #digest == 32 then
        return digest
    end
    digest = RL_ZERO
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
        digest = rl_hash(digest, all[i], all[i + 1])
    end
    redis.call('SET', RL_DIGEST, digest)
    return digest
end

-- replaces an entry ("old" as stored now, or nil), keeping the digest and
-- the index (a field stays in the hash for good: deleted, it holds "-")
local function rl_store(id, old, value)
    local digest = rl_digest()
    if old then
        digest = rl_hash(digest, id, old)
    end
    redis.call('HSET', KEYS[1], id, value)
    redis.call('SET', RL_DIGEST, rl_hash(digest, id, value))
    if not old then
        redis.call('ZADD', KEYS[1] .. ':index', 0, id)
    end
end

