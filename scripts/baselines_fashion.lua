-- The best hand-designed solver configuration at NFE 4, 5, 6, 8, 10 (diffuse.search.baselines):
-- chosen on one set of noise seeds, reported on held-out noise.
--
--   Fashion-MNIST denoiser: FD of 1000 samples (noise seed 1) chooses the solver, grid and t_end;
--   the chosen configurations are then scored on 2000 samples of seed 2.
--   gmm2d, gmm64d: RMS error to the exact ODE solution, chosen on seed 1, reported on seed 2.
--
-- Writes a JSON of every result to <out>/baselines.json and the Markdown tables to
-- <out>/baselines.md.
--
--   lua5.4 scripts/baselines_fashion.lua [out_dir = scratch] [fashion | gmm | all = all]
local diffuse = require("diffuse")
local baselines = require("diffuse.search.baselines")
local fitness = require("diffuse.search.fitness")
local json = require("diffuse.json")

local out_dir = arg and arg[1] or "scratch"
local which = arg and arg[2] or "all"
os.execute("mkdir -p '" .. out_dir .. "'")
local nfes = { 4, 5, 6, 8, 10 }

-- atomic: never a half-written file (diffuse.util.write_file)
local function write_atomic(path, text) assert(require("diffuse.util").write_file(path, text)) end

local results, md = {}, {}

local function held_out(r, f2)
  local rows = {}
  for _, n in ipairs(nfes) do
    local b = r.best[n]
    local score, info = f2(b.run)
    assert(info.nfe == n, "held-out run took a different NFE")
    rows[#rows + 1] = { nfe = n, label = b.label, spacing = b.spacing, t_end = b.t_end, run = b.run,
      search_score = b.score, held_out = score }
    print(("NFE %2d  %-18s %-15s t_end %-6s  search %.4f  held-out %.4f"):format(n, b.label, b.spacing,
      tostring(b.t_end), b.score, score))
  end
  return rows
end

local function held_table(rows, metric)
  local lines = { ("| NFE | best configuration | %s (search noise) | %s (held-out noise) |"):format(metric, metric),
    "| --- | --- | --- | --- |" }
  for _, r in ipairs(rows) do
    lines[#lines + 1] = ("| %d | %s, %s%s | %.4g | %.4g |"):format(r.nfe, r.label, r.spacing,
      r.t_end and (", t_end " .. r.t_end) or "", r.search_score, r.held_out)
  end
  return table.concat(lines, "\n")
end

local function strip(r)
  -- the full table without closures, for JSON
  local rows = {}
  for i, row in ipairs(r.table) do
    rows[i] = { nfe = row.nfe, label = row.label, spacing = row.spacing, t_end = row.t_end or nil, score = row.score,
      seconds = row.seconds, error = row.error }
  end
  return rows
end

local wtime = require("diffuse.core").wtime
local t_all = wtime()

if which == "all" or which == "gmm" then
  for _, name in ipairs({ "gmm2d", "gmm64d" }) do
    local t0 = wtime()
    local f1 = baselines.problems.fitness(name, 1)
    local r = baselines{ fitness = f1, nfe = nfes, progress = name }
    local f2 = baselines.problems.fitness(name, 2)
    print(("== %s (RMS error to the exact ODE solution)"):format(name))
    local rows = held_out(r, f2)
    results[name] = { best = rows, table = strip(r), seconds = wtime() - t0 }
    md[#md + 1] = ("### %s: RMS error to the exact solution, each solver at its best grid (noise seed 1)\n\n%s\n\n" ..
      "Best configuration, chosen on seed 1, on held-out seed 2:\n\n%s\n"):format(name, baselines.format(r),
      held_table(rows, "RMS error"))
  end
end

if which == "all" or which == "fashion" then
  local t0 = wtime()
  local f1 = fitness.fashion{ n = 1000, seed = 1 }
  local r = baselines{ fitness = f1, nfe = nfes, t_ends = { false, 1e-2 }, progress = "fashion" }
  local f2 = fitness.fashion{ n = 2000, seed = 2 }
  print("== fashion (FD, classifier features)")
  local rows = held_out(r, f2)
  results.fashion = { best = rows, table = strip(r), seconds = wtime() - t0 }
  md[#md + 1] = ("### Fashion-MNIST denoiser: FD of 1000 samples (noise seed 1), each solver at its best grid\n\n%s\n\n" ..
    "Best configuration, chosen on seed 1, on 2000 samples of held-out seed 2:\n\n%s\n"):format(baselines.format(r),
    held_table(rows, "FD"))
end

write_atomic(out_dir .. "/baselines.json", json.encode(results) .. "\n")
write_atomic(out_dir .. "/baselines.md", table.concat(md, "\n"))
print(("wrote %s/baselines.json and %s/baselines.md (%.0f s)"):format(out_dir, out_dir, wtime() - t_all))
