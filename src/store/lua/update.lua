-- User fields only (a backend's call). KEYS: p, s. ARGV: uid, fields JSON.
local p, s = KEYS[1], KEYS[2]
local t = now()
local b = before_state(p)
apply_fields(p, ARGV[2], t)
redis.call('HSET', p, 'k', 1)
return finish(ARGV[1], p, s, b, t)
