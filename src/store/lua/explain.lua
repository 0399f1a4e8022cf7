-- Why a user shows as they do. KEYS: p, s. ARGV: uid. '' for an unknown user.
local p, s = KEYS[1], KEYS[2]
if redis.call('HEXISTS', p, 'k') == 0 then return '' end
local t = now()
local cs, a, ss = fields(p, t, false)
local list = sessions(s)
local st, devs, latest = aggregate(list, ss)
local parts = {}
for i, x in ipairs(list) do
  parts[i] = '{"k":' .. cjson.encode(x.key) .. ',"d":' .. cjson.encode(x.d) .. ',"s":' ..
    tonumber(x.s) .. ',"l":' .. tonumber(x.l) .. '}'
end
local h = redis.call('HMGET', p, 'vis', 'sse', 'cse', 'ae')
return '{"p":' .. payload(ARGV[1], st, tonumber(hget(p, 'ls') or 0), latest or hget(p, 'd'),
  devs, cs, a, tonumber(hget(p, 'v') or 0), st, false) .. ',"s":[' .. table.concat(parts, ',') ..
  '],"vis":' .. tonumber(h[1] or 0) .. ',"ss":' .. ss .. ',"sse":' .. tonumber(h[2] or 0) ..
  ',"cse":' .. tonumber(h[3] or 0) .. ',"ae":' .. tonumber(h[4] or 0) .. '}'
