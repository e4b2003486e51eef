-- The DTS* target: does DTS* at a budget of B NFE reach the best reward of best-of-N at 3 B?
-- On the shipped Fashion-MNIST denoiser (20-step stochastic chain), for the class reward
-- log p(class 8 | x) and the PNG-size reward, the mean over `seeds` searches of the best
-- reward found by: best-of-N at B and at 3 B (N = B / 20, 3 B / 20), and DTS* at B grown 4 and
-- 16 descents per round (lambda 10 and UCT exploration 0.1 for the class reward; 100 and 0.01
-- for the PNG reward, whose values spread ten times less).
--
--   lua5.4 scripts/steer_dts_star.lua [reward = class | png] [seeds = 12] [budgets = 80,320,1280]
local diffuse = require("diffuse")
local steer = diffuse.steer

local which = arg and arg[1] or "class"
local seeds = tonumber(arg and arg[2]) or 12
local budgets = {}
for b in (arg and arg[3] or "80,320,1280"):gmatch("%d+") do budgets[#budgets + 1] = tonumber(b) end

local model = assert(diffuse.models.load("fashion-denoiser"))
local reward, lambda, exploration
if which == "png" then
  reward, lambda, exploration = steer.rewards.png_size(), 100, 0.01
elseif which == "class" then
  reward, lambda, exploration = steer.rewards.class_logprob{ class = 8 }, 10, 0.1
else
  error("reward must be 'class' or 'png'")
end
local base = { model = model, shape = { 1, 28, 28 }, steps = 20, reward = reward }
local function run(f, extra, seed)
  local o = { seed = 1000 + seed }
  for k, v in pairs(base) do o[k] = v end
  for k, v in pairs(extra) do o[k] = v end
  return f(o).best.reward
end
local function mean(f, extra)
  local acc = 0
  for s = 1, seeds do acc = acc + run(f, extra, s) end
  return acc / seeds
end

print(("| B | best-of-N at B | best-of-N at 3B | DTS* at B, 4 per round | DTS* at B, 16 per round |"))
print("| --- | --- | --- | --- | --- |")
for _, B in ipairs(budgets) do
  local b1 = mean(steer.best_of_n, { n = B // 20 })
  local b3 = mean(steer.best_of_n, { n = 3 * B // 20, batch = 64 })
  local d4 = mean(steer.dts_star, { nfe = B, batch = 4, lambda = lambda, exploration = exploration })
  local d16 = mean(steer.dts_star, { nfe = B, batch = 16, lambda = lambda, exploration = exploration })
  print(("| %d | %.4f | %.4f | %.4f | %.4f |"):format(B, b1, b3, d4, d16))
end
