-- Everything a shard that lags behind needs: {version, digest, id, value,
-- id, ...} in one atomic read.
--
-- KEYS[1]  the rules hash            KEYS[2]  the rules version

local out = {tonumber(redis.call('GET', KEYS[2]) or '0'), rl_digest()}
local all = redis.call('HGETALL', KEYS[1])

for i = 1, #all do
    out[#out + 1] = all[i]
end

return out
