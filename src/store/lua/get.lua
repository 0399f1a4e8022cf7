-- The presence of a user as requester sees it: the payload, 'U' (unknown) or 'H' (hidden).
-- KEYS: p, s, c, b. ARGV: uid, requester ('' for no privacy filter).
local p, s, c, b = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local uid, r = ARGV[1], ARGV[2]
if redis.call('HEXISTS', p, 'k') == 0 then return 'U' end
if r ~= '' and not may_see(uid, p, c, b, r) then return 'H' end
local t = now()
local cs, a, ss = fields(p, t, false)
local st, devs, latest = aggregate(sessions(s), ss)
return payload(uid, st, tonumber(hget(p, 'ls') or 0), latest or hget(p, 'd'), devs, cs, a,
               tonumber(hget(p, 'v') or 0), st, false)
