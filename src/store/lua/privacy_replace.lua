-- All of a user's settings at once. KEYS: p, c, b.
-- ARGV: uid, visibility, number of contacts, contacts..., blocked...
local p, c, b = KEYS[1], KEYS[2], KEYS[3]
local nc = tonumber(ARGV[3])
redis.call('DEL', c, b)
for i = 4, 3 + nc do redis.call('SADD', c, ARGV[i]) end
for i = 4 + nc, #ARGV do redis.call('SADD', b, ARGV[i]) end
redis.call('HSET', p, 'vis', tonumber(ARGV[2]), 'k', 1)
redis.call('SPUBLISH', p, '{"t":"v","u":' .. cjson.encode(ARGV[1]) .. '}')
return 'OK'
