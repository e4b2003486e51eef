-- Images from the empirical-data denoiser: the exact posterior mean over a Fashion-MNIST data
-- set (what a perfectly trained network would compute).  Sampling with it reproduces
-- training images - that is the point of the exercise: an exact reference for solvers.
--
--   lua5.4 examples/fashion_empirical.lua [n_data] [out.png]
local diffuse = require("diffuse")

local n_data = tonumber(arg and arg[1]) or 10000
local out = arg and arg[2] or "build/examples/fashion_empirical.png"
os.execute("mkdir -p \"$(dirname '" .. out .. "')\"")

local data, err = diffuse.data.fashion_mnist{ split = "train", limit = n_data }
if not data then
  io.stderr:write(err, "\n")
  os.exit(1)
end
local model = diffuse.models.empirical(data.images)
local schedule = diffuse.schedule.vp_linear()
local solver = diffuse.sampler.solvers["dpmsolver++"] and "dpmsolver++" or "deis"
local t0 = diffuse.wtime()
local x, info = diffuse.sample{ model = model, schedule = schedule, solver = solver, steps = 10,
  shape = { 36, 1, 28, 28 }, seed = 1 }
assert(diffuse.image.write_grid(out, x:clamp(-1, 1), { nrow = 6 }))
print(("wrote %s: 36 samples of the empirical denoiser over %d training images, %s, %d NFE, %.1f s"):format(
  out, n_data, solver, info.nfe, diffuse.wtime() - t0))
