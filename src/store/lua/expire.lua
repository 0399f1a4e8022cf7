-- Fields whose deadline passed are cleared and the change published.
-- KEYS: p, s. ARGV: uid.
local p, s = KEYS[1], KEYS[2]
if redis.call('HEXISTS', p, 'k') == 0 then return '' end
return finish(ARGV[1], p, s, before_state(p), now())
