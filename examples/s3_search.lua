-- S3 solver-schedule search in a few lines: the best plan with a fixed number of model
-- evaluations for an exact 2-D Gaussian mixture (fitness: distance to the exact ODE solution),
-- compared with every named solver at the same NFE on held-out noise.
--
--   lua5.4 examples/s3_search.lua [nfe = 5] [generations = 4] [archive.jsonl] [workers = 1]
--   mpirun -n 4 lua5.4 examples/s3_search.lua 5 8         (candidates evaluated on 4 ranks)
--
-- With an archive path a rerun resumes: evaluations already in the file are not repeated.
local diffuse = require("diffuse")
local search = diffuse.search

local nfe = tonumber(arg and arg[1]) or 5
local generations = tonumber(arg and arg[2]) or 4
local archive = arg and arg[3] ~= "" and arg[3] or nil
local workers = tonumber(arg and arg[4]) or 1

local means, stds = {}, {}
for k = 1, 6 do
  local a = 2 * math.pi * (k - 1) / 6
  means[k] = { 1.5 * math.cos(a), 1.5 * math.sin(a) }
  stds[k] = 0.15
end
local gmm = diffuse.models.gmm{ means = means, stds = stds }
local schedule = diffuse.schedule.vp_linear()
local f = search.fitness.ode_error{ model = gmm, schedule = schedule, shape = { 256, 2 }, seed = 1 }

-- Parallel evaluation when asked for (forked workers) or when started by mpirun.
local pool
local under_mpi = os.getenv("OMPI_COMM_WORLD_SIZE") ~= nil and tonumber(os.getenv("OMPI_COMM_WORLD_SIZE")) > 1
if workers > 1 or under_mpi then
  pool = under_mpi and search.parallel.pool{ mpi = true } or search.parallel.pool{ workers = workers }
  if not pool:is_root() then
    pool:serve(search.s3.evaluator(f))   -- evaluate what the root sends until it is done
    pool:close()
    return
  end
end

local best, score, info = search.s3{ fitness = f, nfe = nfe, schedule = schedule, seed = 1, archive = archive,
  generations = generations, pool = pool }
if pool then pool:close() end

print(diffuse.plan.format(best))
print(("searched: %.4g after %d evaluations (%d new) in %.1f s"):format(score, info.evaluations, info.evaluated, info.seconds))

-- Held-out noise: the searched plan against every named solver at this NFE.
local held = f:with_seed(2)
local best_name, best_preset = nil, math.huge
for _, p in ipairs(info.space:presets()) do
  local s = held{ solver = "plan", plan = p }
  if s < best_preset then best_name, best_preset = p.name, s end
end
local s_best = held{ solver = "plan", plan = best }
print(("held-out ODE error: searched %.4g, best preset %.4g (%s): %.0f%% lower"):format(s_best, best_preset, best_name,
  100 * (1 - s_best / best_preset)))
