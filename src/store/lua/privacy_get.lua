-- KEYS: p, c, b. Returns {"vis":n,"c":[...],"b":[...]} (lists sorted).
local function list(key)
  local m = redis.call('SMEMBERS', key)
  table.sort(m)
  local parts = {}
  for i, x in ipairs(m) do parts[i] = cjson.encode(x) end
  return '[' .. table.concat(parts, ',') .. ']'
end
return '{"vis":' .. tonumber(hget(KEYS[1], 'vis') or 0) .. ',"c":' .. list(KEYS[2]) ..
  ',"b":' .. list(KEYS[3]) .. '}'
