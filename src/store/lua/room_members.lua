-- A page of members after a user id, leaving out those hiding from the requester ('' for
-- none: a backend). Returns {"count":n,"more":bool,"ms":[members]}.
-- KEYS: h, z. ARGV: after ('' from the start), limit, requester.
local h, z = KEYS[1], KEYS[2]
local limit, who = tonumber(ARGV[2]), ARGV[3] or ''
local from = ARGV[1] == '' and '-' or ('(' .. ARGV[1])
local parts, more = {}, false
-- Hidden members are skipped, so a page may need more than one range; each range is a
-- page's worth, and a requester is hidden from few members.
while true do
  local ids = redis.call('ZRANGEBYLEX', z, from, '+', 'LIMIT', 0, limit + 1)
  for i = 1, #ids do
    local raw = redis.call('HGET', h, ids[i])
    if raw then
      local m = cjson.decode(raw)
      if who == '' or not hides(m, who) then
        if #parts == limit then more = true; break end
        parts[#parts + 1] = member_json(ids[i], m)
      end
    end
    from = '(' .. ids[i]
  end
  if more or #ids <= limit then break end
end
return '{"count":' .. redis.call('ZCARD', z) .. ',"more":' .. (more and 'true' or 'false') ..
  ',"ms":[' .. table.concat(parts, ',') .. ']}'
