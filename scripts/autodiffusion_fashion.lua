-- AutoDiffusion on the shipped Fashion-MNIST denoiser at 4 steps (DDIM):
--   1. the time-step search (FD of 1000 samples, noise seed 1), reported on 2000 samples of
--      held-out noise seed 2 against DDIM on the uniform grid;
--   2. the joint search of time steps and skipped residual blocks for total block budgets
--      (default 2, 4, 6, 12 of the 4 x 6 block evaluations), starting from the time-stage result;
--      FD on held-out noise against the fraction of network compute saved.
-- Writes <out>/autodiffusion.json and <out>/autodiffusion.md; archives (one JSON line per
-- evaluated candidate, reruns resume) go to <out>/autodiffusion-*.jsonl.
--
--   lua5.4 scripts/autodiffusion_fashion.lua [out = scratch] [population = 24] [generations = 10]
--                                            [budgets = 2,4,6,12 ("-": none)] [joint population = 24] [joint generations = 8]
--                                            [start = fixed | free]
-- "free" searches the first time step too (as the paper, whose sampler starts from pure noise at
-- whichever step comes first); "fixed" keeps it at t_start, where the noise is drawn.
local diffuse = require("diffuse")
local fitness = require("diffuse.search.fitness")
local AD = require("diffuse.search.autodiffusion")
local json = require("diffuse.json")
local wtime = require("diffuse.core").wtime

local out = arg[1] or "scratch"
local P = tonumber(arg[2]) or 24
local G = tonumber(arg[3]) or 10
local budgets = {}
for b in (arg[4] or "2,4,6,12"):gmatch("%d+") do budgets[#budgets + 1] = tonumber(b) end
local PJ = tonumber(arg[5]) or 24
local GJ = tonumber(arg[6]) or 8
local fix_start = arg[7] ~= "free"
local K = 4
os.execute("mkdir -p '" .. out .. "'")

-- atomic: never a half-written file (diffuse.util.write_file)
local function write_atomic(path, text) assert(require("diffuse.util").write_file(path, text)) end

local f1 = fitness.fashion{ n = 1000, seed = 1 }
local f2 = fitness.fashion{ n = 2000, seed = 2 }
local model = f1.opts.model
local net = model.net

-- Fraction of the network's multiply-adds in one residual block: per sample, a linear layer
-- costs one multiply-add per weight, so count the weights of the matrices a forward pass
-- uses (the class-embedding table is a lookup, not a product).
local function block_fraction()
  local total, blocks = 0, 0
  for _, nm in ipairs(net:named_modules()) do
    if nm.module._class == "Linear" then
      local n = nm.module.weight.value:numel()
      total = total + n
      if nm.name:match("^blocks%.") then blocks = blocks + n end
    end
  end
  return blocks / total / #net.blocks
end
local per_block = block_fraction()

local t_all = wtime()
local results = { steps = K, population = P, generations = G }

-- DDIM on the uniform grid (the reference of the target)
local ddim_run = { solver = "ddim", steps = K, spacing = "time_uniform" }
local ddim_search = f1(ddim_run)
local ddim_held = f2(ddim_run)
print(("DDIM uniform, %d steps: FD %.4f (search noise), %.4f (held-out)"):format(K, ddim_search, ddim_held))
results.ddim_uniform = { search = ddim_search, held_out = ddim_held }

-- 1. time steps
local t0 = wtime()
local best, score, info = AD{ fitness = f1, steps = K, solver = "ddim", population = P, generations = G, seed = 1,
  fix_start = fix_start, progress = "autodiffusion time", archive = out .. "/autodiffusion-time.jsonl" }
local held = f2(info.run)
print(("time steps: %s  FD %.4f (search), %.4f (held-out), %d evaluations, %.0f s"):format(
  table.concat(best.times, ", "), score, held, info.evaluations, wtime() - t0))
results.time = { times = best.times, search = score, held_out = held, evaluations = info.evaluations,
  seconds = wtime() - t0, history = info.history }

-- 2. joint: time steps and skipped blocks
results.joint = {}
for _, b in ipairs(budgets) do
  local t1 = wtime()
  local bj, sj, ij = AD{ fitness = f1, steps = K, solver = "ddim", stage = "joint", block_budget = b, init = best,
    fix_start = fix_start, population = PJ, generations = GJ, seed = 1, progress = ("autodiffusion joint %d"):format(b),
    archive = ("%s/autodiffusion-joint%d.jsonl"):format(out, b) }
  local hj = f2(ij.run)
  local saved_blocks = b / (K * #net.blocks)
  local saved = b * per_block / K
  print(("budget %d: times %s skips %s  FD %.4f (search), %.4f (held-out); compute saved %.1f%% (%.1f%% of block evaluations), %.0f s"):format(
    b, table.concat(bj.times, ", "), json.encode(bj.skips), sj, hj, 100 * saved, 100 * saved_blocks, wtime() - t1))
  results.joint[#results.joint + 1] = { budget = b, times = bj.times, skips = bj.skips, search = sj, held_out = hj,
    saved = saved, saved_blocks = saved_blocks, evaluations = ij.evaluations, seconds = wtime() - t1 }
end

local md = { ("DDIM, %d steps. FD on 2000 samples of held-out noise (seed 2); the search used 1000 samples of seed 1."):format(K), "",
  "| configuration | network compute saved | FD (search noise) | FD (held-out) |", "| --- | --- | --- | --- |",
  ("| DDIM, uniform grid | 0 | %.3f | %.3f |"):format(ddim_search, ddim_held),
  ("| AutoDiffusion, searched times | 0 | %.3f | %.3f |"):format(score, held) }
for _, r in ipairs(results.joint) do
  md[#md + 1] = ("| AutoDiffusion, times + %d blocks skipped | %s | %.3f | %.3f |"):format(r.budget,
    ("%.1f%%"):format(100 * r.saved), r.search, r.held_out)
end
md[#md + 1] = ""
md[#md + 1] = ("Searched times: %s. Total %.0f s."):format(table.concat(best.times, ", "), wtime() - t_all)
results.seconds = wtime() - t_all
results.block_fraction = per_block
write_atomic(out .. "/autodiffusion.json", json.encode(results) .. "\n")
write_atomic(out .. "/autodiffusion.md", table.concat(md, "\n") .. "\n")
print(table.concat(md, "\n"))
