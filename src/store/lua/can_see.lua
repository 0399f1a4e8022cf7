-- Which requesters may see the user: an array of 0/1.
-- KEYS: p, c, b. ARGV: uid, requesters...
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = may_see(ARGV[1], KEYS[1], KEYS[2], KEYS[3], ARGV[i]) and 1 or 0
end
return out
