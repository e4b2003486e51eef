-- sgemm throughput through the tensor API next to cblas_sgemm called directly from C with the
-- same OpenBLAS kernels, plus the direct call under each OPENBLAS_CORETYPE worth comparing.
-- Run with `make bench` (which builds the C reference, build/sgemm_direct), or by hand:
--   SGEMM_DIRECT=build/sgemm_direct lua5.4 examples/bench/matmul_bench.lua
-- The machine may be shared: every figure is the best of several repetitions.
local diffuse = require("diffuse")

local REPS = tonumber(os.getenv("BENCH_REPS")) or 15     -- timed calls per measurement
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 3  -- interleaved rounds, best kept
local direct = os.getenv("SGEMM_DIRECT") or "build/sgemm_direct"

local info = diffuse.blas_info()
print(("OpenBLAS: %s\n  core %s (chosen: %s), %d threads\n  %s"):format(
  tostring(info.library), tostring(info.core), tostring(info.chosen), info.threads, tostring(info.config)))
if not info.library then
  print("no BLAS loaded: " .. tostring(info.error))
  return
end

local function filled(r, c, phase)
  local n = r * c
  return diffuse.linspace(-1 + phase, 1 - phase, n):reshape(r, c)
end

local function gflops(m, n, k, seconds) return 2 * m * n * k / seconds * 1e-9 end

-- Best wall time of f over REPS runs (after one warm-up call).
local function best_time(f)
  f()
  local best = math.huge
  for _ = 1, REPS do
    local t0 = diffuse.wtime()
    f()
    local dt = diffuse.wtime() - t0
    if dt < best then best = dt end
  end
  return best
end

local function api(m, n, k)
  local a, b = filled(m, k, 0.1), filled(k, n, 0.2)
  local out = diffuse.zeros(m, n)
  local fresh = gflops(m, n, k, best_time(function() return a:matmul(b) end))
  local into = gflops(m, n, k, best_time(function() return a:matmul(b, {out = out}) end))
  return fresh, into
end

local function run_direct(core, m, n, k)
  local env = core and ("OPENBLAS_CORETYPE=" .. core) or "-u OPENBLAS_CORETYPE"
  -- The pause lets this process's OpenBLAS threads, which spin for a while after each call,
  -- go to sleep: otherwise they would compete with the direct program for the cores.
  local p = io.popen(("sleep 0.5; env %s %s %d %d %d %d 2>&1"):format(env, direct, m, n, k, REPS))
  local out = p and p:read("a") or ""
  if p then p:close() end
  local name, g = out:match("core=(%S+) gflops=([%d%.]+)")
  return tonumber(g), name, out
end

local have_direct = run_direct(info.core, 8, 8, 8) ~= nil
if not have_direct then
  print(("(direct reference %s not available: build it with `make %s`)"):format(direct, direct))
end

print(("\n%-22s %10s %14s %12s %7s"):format("sgemm size", "API GF/s", "API out= GF/s", "direct GF/s", "ratio"))
for _, s in ipairs{{1024, 1024, 1024}, {256, 1024, 1024}} do
  local m, n, k = s[1], s[2], s[3]
  -- alternate API and direct runs so a noisy neighbour hurts both alike
  local fresh, into, d = 0, 0, 0
  for _ = 1, ROUNDS do
    local f, i = api(m, n, k)
    fresh, into = math.max(fresh, f), math.max(into, i)
    if have_direct then d = math.max(d, run_direct(info.core, m, n, k) or 0) end
  end
  local label = ("(%dx%d)(%dx%d)"):format(m, k, k, n)
  if have_direct then
    print(("%-22s %10.1f %14.1f %12.1f %6.2fx"):format(label, fresh, into, d, math.max(fresh, into) / d))
  else
    print(("%-22s %10.1f %14.1f %12s %7s"):format(label, fresh, into, "-", "-"))
  end
end

if have_direct then
  print("\ndirect cblas_sgemm at 1024^3 by OPENBLAS_CORETYPE (what the core choice is based on):")
  local cores = {false, "SkylakeX", "Haswell", "Zen", "SandyBridge", "Prescott"}
  local best, names = {}, {}
  for _ = 1, ROUNDS do
    for i, core in ipairs(cores) do
      local g, name = run_direct(core or nil, 1024, 1024, 1024)
      best[i] = math.max(best[i] or 0, g or 0)
      names[i] = name
    end
  end
  for i, core in ipairs(cores) do
    print(("  %-26s %8.1f GF/s  (OpenBLAS reports %s)"):format(
      core or "(unset: OpenBLAS decides)", best[i], tostring(names[i])))
  end
end
