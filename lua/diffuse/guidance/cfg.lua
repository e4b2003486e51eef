-- Classifier-free guidance: out = u + scale (c - u) with c the conditional and u the
-- unconditional prediction, optionally
--   rescaled (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed"):
--     g' = g * std(c) / std(g) per row, mixed as phi g' + (1 - phi) g, in eps or x0 space;
--   restricted to a guidance interval (Kynkäänniemi et al., "Applying Guidance in a Limited
--     Interval Improves Sample and Distribution Quality"): guided only for lo < sigma_hat <= hi,
--     elsewhere the conditional prediction alone (1 evaluation per row).
--
-- Why the combination is done in the base model's own kind: every conversion between kinds is
-- affine in the output with the same x term (x0 = A x + B out, eps = C x + D out), and the
-- weights (1 - scale, scale) sum to 1, so u + scale (c - u) is the same prediction whichever
-- kind it is formed in.  The space only matters for the rescale (std of eps or of x0) and for
-- Adaptive Guidance's cosine similarity.
local core = require("diffuse.core")
local util = require("diffuse.util")
local G = require("diffuse.guidance")

local M = {}

local spaces = { eps = true, x0 = true, v = true }

-- Checks the options shared by CFG-like methods; returns space, phi, interval.
function M.check_common(F, opts, level)
  level = (level or 1) + 1
  G.check_scale(F, "scale", opts.scale, level)
  if not spaces[opts.space] then
    util.fail(F, ("unknown space '%s' (valid: eps, x0, v)"):format(tostring(opts.space)), level)
  end
  G.check_scale(F, "rescale", opts.rescale, level)
  if opts.rescale < 0 or opts.rescale > 1 then util.fail(F, ("'rescale' (phi) must be in [0, 1], got %g"):format(opts.rescale), level) end
  local iv = opts.interval
  if iv ~= nil then
    if type(iv) ~= "table" or type(iv[1]) ~= "number" or type(iv[2]) ~= "number" then
      util.fail(F, "'interval' must be {lo, hi}: guidance where lo < noise level <= hi", level)
    end
  end
  local on = opts.interval_on
  if on ~= "sigma_hat" and on ~= "t" and on ~= "sigma" and on ~= "lambda" then
    util.fail(F, ("unknown interval_on '%s' (valid: lambda, sigma, sigma_hat, t)"):format(tostring(on)), level)
  end
end

-- Whether guidance applies at point p (the interval test).
function M.inside(opts, p)
  local iv = opts.interval
  if iv == nil then return true end
  local v = p[opts.interval_on]
  return v > iv[1] and v <= iv[2]
end

-- The guided prediction from c and u (both of kind `kind`) at (x, p): one lincomb, then the
-- rescale when phi > 0 (per-row stds in opts.space).
function M.combine(opts, kind, c, u, x, p)
  local w = opts.scale
  local g = core.lincomb({ u, c }, { 1 - w, w })
  local phi = opts.rescale
  if phi == 0 then return g end
  local space = opts.space
  local cs, gs = G.to_space(c, kind, space, x, p), G.to_space(g, kind, space, x, p)
  local sc, sg = G.row_std(cs):totable(), G.row_std(gs):totable()
  local f = {}
  for i = 1, #sc do
    local r = sg[i] > 0 and sc[i] / sg[i] or 1
    f[i] = { phi * r + (1 - phi) }
  end
  local shape = gs:shape()
  local fr = core.tensor(f)
  local out = G.flat(gs):mul(fr):view(shape)
  return G.to_space(out, space, kind, x, p)
end

M.defaults = { scale = 1, space = "eps", rescale = 0, interval = nil, interval_on = "sigma_hat" }
M.valid = { scale = true, space = true, rescale = true, interval = true, interval_on = true }

-- cfg{model, scale = 1, space = "eps", rescale = 0, interval = nil, interval_on = "sigma_hat"}
function M.cfg(o)
  local F = "guidance.cfg"
  local g = G.object(F, o, M.valid, M.defaults, 2)
  M.check_common(F, g.opts, 2)
  g.guide = function(self, x, p, cond, ctx)
    self:memory(x, p, ctx)
    local opts = self.opts
    local c = self:eval(x, p, cond, ctx)
    if not M.inside(opts, p) then return c end
    if opts.scale == 1 and opts.rescale == 0 then return c end
    local u = self:eval(x, p, nil, ctx)
    return M.combine(opts, self.predicts, c, u, x, p)
  end
  g.describe = function(self)
    local o = self.opts
    local parts = { ("scale %g"):format(o.scale) }
    if o.rescale > 0 then parts[#parts + 1] = ("rescale %g in %s"):format(o.rescale, o.space) end
    if o.interval then parts[#parts + 1] = ("interval (%g, %g] in %s"):format(o.interval[1], o.interval[2], o.interval_on) end
    return table.concat(parts, ", ")
  end
  return g
end

M.methods = { cfg = M.cfg }

return M
