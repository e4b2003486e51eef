-- Conversions between what a model predicts and the two quantities solvers use: the data
-- estimate x0 and the noise estimate eps, where x = alpha x0 + sigma eps.
--   eps    the noise
--   x0     the data (a denoiser)
--   v      alpha eps - sigma x0 (Salimans & Ho)
--   score  grad log p(x) = -eps / sigma
--   flow   dx/dt = alpha'(t) x0 + sigma'(t) eps (rectified flow: eps - x0); needs the
--          schedule's derivatives (point.dalpha, point.dsigma)
-- Each conversion is one or two fused passes (lincomb) in float32 with double coefficients.
local core = require("diffuse.core")
local lincomb = core.lincomb

local M = {}

M.kinds = { eps = true, x0 = true, v = true, score = true, flow = true }

local function need_sigma(p, what)
  if not (p.sigma > 0) then
    error(("cannot convert a %s prediction at t = %.17g: sigma is 0"):format(what, p.t), 3)
  end
end

-- Returns x0, eps for a model output `out` of kind `kind` at x and point p.  need = "x0" or
-- "eps" skips computing the other one (it comes back nil): a pass over memory saved.
function M.to_x0_eps(kind, out, x, p, need)
  local a, s = p.alpha, p.sigma
  if kind == "x0" then
    if need == "x0" or not (s > 0) then return out, nil end
    return out, lincomb({ x, out }, { 1 / s, -a / s })
  elseif kind == "eps" then
    if need == "eps" then return nil, out end
    if not (a > 0) then error(("cannot convert an eps prediction at t = %.17g: alpha is 0"):format(p.t), 2) end
    return lincomb({ x, out }, { 1 / a, -s / a }), out
  elseif kind == "v" then
    local n = a * a + s * s
    return lincomb({ x, out }, { a / n, -s / n }), lincomb({ x, out }, { s / n, a / n })
  elseif kind == "score" then
    need_sigma(p, "score")
    local eps = out:mul(-s)
    return lincomb({ x, eps }, { 1 / a, -s / a }), eps
  elseif kind == "flow" then
    local da, ds = p.dalpha, p.dsigma
    if not (da and ds) then
      error("a flow prediction needs a schedule with derivatives (rectified_flow)", 2)
    end
    local det = ds * a - s * da
    return lincomb({ x, out }, { ds / det, -s / det }), lincomb({ x, out }, { -da / det, a / det })
  end
  error(("unknown prediction kind '%s' (valid: eps, x0, v, score, flow)"):format(tostring(kind)), 2)
end

return M
