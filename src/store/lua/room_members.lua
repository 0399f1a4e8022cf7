-- A page of members after a user id. Returns {"count":n,"more":bool,"ms":[members]}.
-- KEYS: h, z. ARGV: after ('' from the start), limit.
local h, z = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[2])
local from = ARGV[1] == '' and '-' or ('(' .. ARGV[1])
local ids = redis.call('ZRANGEBYLEX', z, from, '+', 'LIMIT', 0, limit + 1)
local more = #ids > limit
local parts = {}
for i = 1, math.min(#ids, limit) do
  local raw = redis.call('HGET', h, ids[i])
  if raw then parts[#parts + 1] = member_json(ids[i], cjson.decode(raw)) end
end
return '{"count":' .. redis.call('ZCARD', z) .. ',"more":' .. (more and 'true' or 'false') ..
  ',"ms":[' .. table.concat(parts, ',') .. ']}'
