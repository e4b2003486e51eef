-- diffuse.steer: reward-guided and tree sampling.  Every method walks the same denoising
-- chain (steer.chain: the model, its grid and the stochastic kernel), scores with the same
-- rewards (steer.rewards) and returns the same accounting (nfe, calls, reward_evals,
-- reward_calls), so methods compare per network evaluation.  The modules load on first use.
local M = {}

local modules = {
  chain = "diffuse.steer.chain", rewards = "diffuse.steer.rewards", target = "diffuse.steer.target",
  weights = "diffuse.steer.weights",
}
M._modules = modules

setmetatable(M, { __index = function(t, k)
  local name = modules[k]
  if not name then return nil end
  local mod = require(name)
  rawset(t, k, mod)
  return mod
end })

return M
