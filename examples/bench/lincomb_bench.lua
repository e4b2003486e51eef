-- Fused linear combination against memcpy bandwidth.
-- lincomb of 4 tensors of 4M floats moves 5 x 16 MB per call (4 reads + 1 write); a
-- contiguous dst:copy_(src) of 16 MB is a memcpy and moves 2 x 16 MB.  Best of several
-- repetitions, in GB/s (1e9 bytes/s), measured in the same run.  Target ratio >= 0.8.
local diffuse = require("diffuse")

-- Wall-clock seconds (os.clock adds up the CPU time of every thread).
local now = diffuse.wtime

local N = 4 * 1024 * 1024
local MB16 = N * 4
local reps, calls = tonumber(arg and arg[1]) or 15, 5

-- Seconds per call of f, one repetition.
local function time(f)
  local t0 = now()
  for _ = 1, calls do f() end
  return (now() - t0) / calls
end

local ts = {}
for i = 1, 4 do ts[i] = diffuse.full({ N }, i) end
local cs = { 0.5, -1.25, 2.0, 0.125 }
local out = diffuse.zeros(N)
local src, dst = diffuse.full({ N }, 1), diffuse.zeros(N)

local cases = {
  { "memcpy  (dst:copy_(src), 16 MB)      ", 2 * MB16, function() dst:copy_(src) end },
  { "lincomb (4 x 4M floats, new out)     ", 5 * MB16, function() out:lincomb_(ts, cs) end },
  { "lincomb (4 x 4M floats, out = term 1)", 5 * MB16,
    function() ts[1]:lincomb_(ts, { 1, 0, 0, 0 }) end },
}
-- The machine is shared: interleave the cases so each sees the same conditions, keep the
-- best repetition of each.
local best = {}
for i, c in ipairs(cases) do c[3](); best[i] = math.huge end -- warm up: touch every page
for _ = 1, reps do
  for i, c in ipairs(cases) do best[i] = math.min(best[i], time(c[3])) end
end
local copy = cases[1][2] / best[1] / 1e9
print(("%s %6.2f GB/s"):format(cases[1][1], copy))
for i = 2, #cases do
  local rate = cases[i][2] / best[i] / 1e9
  print(("%s %6.2f GB/s   ratio %.2f (target >= 0.8)"):format(cases[i][1], rate, rate / copy))
end
