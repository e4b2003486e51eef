-- diffuse.steer: reward-guided and tree sampling.  Every method walks the same denoising
-- chain (steer.chain: the model, its grid and the stochastic kernel), scores with the same
-- rewards (steer.rewards) and returns the same accounting (nfe, calls, reward_evals,
-- reward_calls), so methods compare per network evaluation.  Modules load on first use.
local M = {}

local modules = {
  chain = "diffuse.steer.chain", rewards = "diffuse.steer.rewards", target = "diffuse.steer.target",
  weights = "diffuse.steer.weights", search = "diffuse.steer.search", svdd = "diffuse.steer.svdd",
  fk = "diffuse.steer.fk", fkc = "diffuse.steer.fkc", dts = "diffuse.steer.dts",
}
-- The methods (and the DTS tree constructor), by the module that holds each.
local methods = {
  best_of_n = "search", random_search = "search", zero_order = "search", path_search = "search",
  svdd = "svdd", fk = "fk", fkc = "fkc", dts = "dts", dts_star = "dts", dts_tree = "dts",
}
M._modules, M._methods = modules, methods

function M.methods()
  local out = {}
  for k in pairs(methods) do if k ~= "dts_tree" then out[#out + 1] = k end end
  table.sort(out)
  return out
end

setmetatable(M, { __index = function(t, k)
  local mod_key = methods[k]
  if mod_key then
    local f = require(modules[mod_key])[k]
    if f == nil then return nil end
    rawset(t, k, f)
    return f
  end
  local name = modules[k]
  if not name then return nil end
  local mod = require(name)
  rawset(t, k, mod)
  return mod
end })

return M
