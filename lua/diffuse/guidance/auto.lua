-- Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"):
--   D = D_guide + scale (D_main - D_guide),
-- both models conditioned on the same cond, where the guide is a weaker version of the main
-- model (smaller, or trained for less time, on the same task).  Where the two agree the
-- extrapolation changes nothing; where the weak model's errors are larger it pushes away from
-- them.  scale = 1 is the main model alone (exactly: the guide's weight is 0).
--
-- The combination is formed in the main model's kind: every kind is affine in the prediction
-- with the same x term at fixed (x, t), and the weights (1 - scale, scale) sum to 1, so the
-- result is the same in any kind; the guide's output is converted to the main model's kind
-- first when the two predict different things.
local core = require("diffuse.core")
local util = require("diffuse.util")
local G = require("diffuse.guidance")

local fail = util.fail

local M = {}

local valid = { guide = true, scale = true, interval = true, interval_on = true }
local defaults = { scale = 2, interval_on = "sigma_hat" }

local function callable(m)
  if type(m) == "function" then return true end
  local mt = getmetatable(m)
  return mt ~= nil and mt.__call ~= nil
end

-- auto{model, guide, scale = 2, interval = nil, interval_on = "sigma_hat"}
function M.auto(o)
  local F = "guidance.auto"
  local g = G.object(F, o, valid, defaults, 2)
  local opts = g.opts
  G.check_scale(F, "scale", opts.scale, 2)
  local guide = opts.guide
  if guide == nil then fail(F, "'guide' is required: the weaker model (e.g. models.load('fashion-denoiser-small'))", 2) end
  if not callable(guide) then fail(F, ("'guide' must be a model (callable), got %s"):format(type(guide)), 2) end
  local gk = type(guide) == "table" and guide.predicts or g.predicts
  if not require("diffuse.predict").kinds[gk] then fail(F, ("the guide predicts an unknown kind '%s'"):format(tostring(gk)), 2) end
  g.guide_model, g.guide_predicts = guide, gk
  local iv = opts.interval
  if iv ~= nil and (type(iv) ~= "table" or type(iv[1]) ~= "number" or type(iv[2]) ~= "number") then
    fail(F, "'interval' must be {lo, hi}: guidance where lo < noise level <= hi", 2)
  end
  local on = opts.interval_on
  if on ~= "sigma_hat" and on ~= "t" and on ~= "sigma" and on ~= "lambda" then
    fail(F, ("unknown interval_on '%s' (valid: lambda, sigma, sigma_hat, t)"):format(tostring(on)), 2)
  end

  local base_reset, base_stats = G.Guidance.reset, G.Guidance.stats
  -- evaluations counts both networks (rows); main_evaluations / guide_evaluations split them,
  -- since the guide is usually much cheaper per evaluation than the main model.
  function g:reset()
    base_reset(self)
    self.acounts = { main = 0, guide = 0 }
  end
  function g:stats()
    local s = base_stats(self)
    s.main_evaluations, s.guide_evaluations = self.acounts.main, self.acounts.guide
    return s
  end
  g:reset()

  g.guide = function(self, x, p, cond, ctx)
    self:memory(x, p, ctx)
    local n = #x
    local o2 = self.opts
    local main = self:eval(x, p, cond, ctx)
    self.acounts.main = self.acounts.main + n
    local w = o2.scale
    if w == 1 then return main end
    local iv = o2.interval
    if iv then
      local v = p[o2.interval_on]
      if not (v > iv[1] and v <= iv[2]) then return main end
    end
    local weak = self.guide_model(x, p, cond)
    self.counts.evaluations = self.counts.evaluations + n
    self.acounts.guide = self.acounts.guide + n
    weak = G.to_space(weak, self.guide_predicts, self.predicts, x, p)
    return core.lincomb({ weak, main }, { 1 - w, w })
  end
  g.describe = function(self)
    return ("scale %g, guide %s"):format(self.opts.scale, tostring(self.guide_model))
  end
  return g
end

M.methods = { auto = M.auto }

return M
