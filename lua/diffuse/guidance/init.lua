-- Guidance: policies that combine a conditional model's predictions (classifier-free guidance
-- and its refinements, classifier guidance, autoguidance) into one prediction.
--
-- THE CONTRACT every guidance method follows (methods live in diffuse/guidance/<file>.lua):
--
-- * A guidance object IS a model.  g = diffuse.guidance.cfg{model = m, scale = 3, ...};
--   g(x, point, cond, ctx) -> a tensor of kind g.predicts (= m.predicts, the base model's kind);
--   g.schedule = m.schedule.  So diffuse.sample{model = g, ...} works with every solver, and
--   guidance objects nest (g2 = cfg{model = cads{model = m}}).
-- * ctx is the sampler's call context {state = st, skip = ...}.  Per-run, per-row memory lives
--   in ctx.state.aux[g.key] (g:memory(x, point, ctx) returns it): tensors there have one row per
--   batch row and are never modified in place (replace them), so st:gather(rows) and
--   st:clone() fork the memory with the rows.  Without ctx or ctx.state (a bare call), the
--   memory lives on the object for one run (a new run starts when the row count changes or t
--   goes up; g:reset() also ends it).
-- * Honest accounting.  Every network evaluation goes through g:eval(x, point, cond, ctx, rows),
--   which counts the rows it evaluates.  g:stats() -> {evaluations = rows evaluated in total,
--   samples = rows sampled (batch rows of every run started), per_sample = evaluations /
--   samples, calls = g(...) calls}; g:reset() clears them.  Partial evaluation (only some rows
--   of a batch) counts only those rows.
-- * Conditioning: cond is what the base model takes (class labels: a number, a list or a 1-d
--   tensor, one per row); cond = nil is the unconditional model (the null class of the shipped
--   denoiser, the whole mixture of a labelled diffuse.models.gmm).
-- * Options are checked with util.check_options (unknown names raise, listing the valid ones);
--   `model` is required and `scale`, where a method has one, must be a number.
-- * A method file returns a table whose field `methods` maps method names to constructors
--   (function(opts) -> guidance object); this module finds them: diffuse.guidance.<name>{...},
--   diffuse.guidance.new{method = "<name>", ...}, diffuse.guidance.methods().  Its optional
--   field `functions` maps names of other public functions (diffuse.guidance.<name>).
--
-- Helpers for method files: M.object (the base object), M.check_scale, M.gather_cond,
-- M.scatter_rows, M.row_dot, M.row_norm, M.row_std, M.to_space.
local core = require("diffuse.core")
local util = require("diffuse.util")
local predict = require("diffuse.predict")

local M = {}

-- Method files, in the order methods() lists their methods.  A missing file is skipped (so the
-- list can name files that arrive later).
M.files = { "diffuse.guidance.cfg", "diffuse.guidance.adaptive", "diffuse.guidance.cads",
  "diffuse.guidance.classifier", "diffuse.guidance.auto" }

local registry, order, loaded = {}, {}, false
local functions = {} -- other public functions of method files (linear_ag_fit, ...)

local function load_methods()
  if loaded then return end
  loaded = true
  for _, name in ipairs(M.files) do
    if package.searchpath(name, package.path) then
      local mod = require(name)
      local names = util.sorted_keys(mod.methods or {})
      for _, k in ipairs(names) do
        if not registry[k] then order[#order + 1] = k end
        registry[k] = mod.methods[k]
      end
      for k, f in pairs(mod.functions or {}) do functions[k] = f end
    end
  end
end

-- The method names, sorted.
function M.methods()
  load_methods()
  local out = {}
  for i, k in ipairs(order) do out[i] = k end
  table.sort(out)
  return out
end

-- diffuse.guidance.new{method = name, ...}: the generic constructor (the other options go to the
-- method's constructor).
function M.new(o)
  local F = "guidance.new"
  if type(o) ~= "table" then util.fail(F, "options table expected", 2) end
  load_methods()
  local name = o.method
  if name == nil then util.fail(F, ("'method' is required (one of: %s)"):format(table.concat(M.methods(), ", ")), 2) end
  local ctor = registry[name]
  if not ctor then
    util.fail(F, ("unknown method '%s' (valid: %s)"):format(tostring(name), table.concat(M.methods(), ", ")), 2)
  end
  local rest = {}
  for k, v in pairs(o) do if k ~= "method" then rest[k] = v end end
  return ctor(rest)
end

----------------------------------------------------------------------------------------------
-- The base object

local Guidance = {}
Guidance.__index = Guidance
M.Guidance = Guidance
Guidance.__call = function(self, x, p, cond, ctx)
  self.counts.calls = self.counts.calls + 1
  return self:guide(x, p, cond, ctx)
end
Guidance.__tostring = function(self)
  return ("diffuse guidance %s (predicts %s, %s)"):format(self.method, self.predicts, self:describe())
end

function Guidance:describe() return tostring(self.model) end

local serial = 0

local function callable(m)
  if type(m) == "function" then return true end
  local mt = getmetatable(m)
  return mt ~= nil and mt.__call ~= nil
end

-- M.object(fname, o, valid, defaults) -> a guidance object with the common fields: model,
-- predicts, schedule, method (fname without "guidance."), key (unique: its slot in state.aux),
-- opts (o over defaults).  valid: the method's option names (model and predicts are added).
-- Raises for unknown options, a missing model and a model that does not say what it predicts.
function M.object(fname, o, valid, defaults, level)
  level = (level or 1) + 1
  local v = { model = true, predicts = true }
  for k in pairs(valid or {}) do v[k] = true end
  if o == nil then util.fail(fname, "options table expected with 'model'", level) end
  util.check_options(fname, o, v, level)
  local m = o.model
  if m == nil then util.fail(fname, "'model' is required (the conditional model to guide)", level) end
  if not callable(m) then util.fail(fname, ("'model' must be a model (callable), got %s"):format(type(m)), level) end
  local predicts = o.predicts or (type(m) == "table" and m.predicts) or nil
  if predicts == nil then
    util.fail(fname, "the model does not say what it predicts: give predicts = 'eps' | 'x0' | 'v' | 'score' | 'flow'", level)
  end
  if not predict.kinds[predicts] then
    util.fail(fname, ("unknown prediction kind '%s' (valid: eps, x0, v, score, flow)"):format(tostring(predicts)), level)
  end
  local opts = {}
  for k, d in pairs(defaults or {}) do opts[k] = d end
  for k, x in pairs(o) do opts[k] = x end
  serial = serial + 1
  local method = fname:gsub("^guidance%.", "")
  local self = setmetatable({ model = m, predicts = predicts, schedule = type(m) == "table" and m.schedule or nil,
    method = method, key = ("%s#%d"):format(method, serial), opts = opts }, Guidance)
  self:reset()
  return self
end

-- M.check_scale(fname, name, v, level): v must be a finite number.
function M.check_scale(fname, name, v, level)
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
    util.fail(fname, ("'%s' must be a finite number, got %s"):format(name, type(v) == "number" and tostring(v) or type(v)),
      (level or 1) + 1)
  end
  return v
end

function Guidance:reset()
  self.counts = { evaluations = 0, samples = 0, calls = 0 }
  self._bare = nil
end

function Guidance:stats()
  local c = self.counts
  return { evaluations = c.evaluations, samples = c.samples, calls = c.calls,
    per_sample = c.samples > 0 and c.evaluations / c.samples or 0 }
end

-- The per-run memory table for this call: ctx.state.aux[key], created (and the run's rows
-- counted as samples) on the first call of a run.  Returns mem, fresh (true on creation).
function Guidance:memory(x, p, ctx)
  local st = ctx and ctx.state
  local n = #x
  if st and st.aux then
    local mem = st.aux[self.key]
    if mem then return mem, false end
    mem = {}
    st.aux[self.key] = mem
    self.counts.samples = self.counts.samples + n
    return mem, true
  end
  local b = self._bare
  local t = p.t or p.sigma or 0 -- a hand-made point may carry only alpha and sigma
  if b and b.n == n and not (t > b.t) then
    b.t = t
    return b.mem, false
  end
  self._bare = { n = n, t = t, mem = {} }
  self.counts.samples = self.counts.samples + n
  return self._bare.mem, true
end

-- Evaluates the base model at (x, p, cond) and counts the rows.  rows (optional): a list of
-- 1-based batch rows; then only those rows of x (and of a per-row cond) are evaluated and the
-- result has #rows rows.  The base model gets ctx for a full batch (nested guidance keeps its
-- memory), only {skip} for a subset (its rows do not match the state's).
function Guidance:eval(x, p, cond, ctx, rows)
  if rows then
    if #rows == 0 then return nil end
    local xs = x:gather(rows)
    local out = self.model(xs, p, M.gather_cond(cond, rows), { skip = ctx and ctx.skip })
    self.counts.evaluations = self.counts.evaluations + #rows
    return out
  end
  local out = self.model(x, p, cond, ctx)
  self.counts.evaluations = self.counts.evaluations + #x
  return out
end

----------------------------------------------------------------------------------------------
-- Row helpers (C reductions; the only Lua loops are over lists of row numbers)

-- cond restricted to rows: a per-row tensor or list is gathered, nil / a number is shared.
function M.gather_cond(cond, rows)
  if cond == nil or type(cond) == "number" then return cond end
  if util.is_tensor(cond) then return cond:gather(rows) end
  if type(cond) == "table" then
    local out = {}
    for i, r in ipairs(rows) do out[i] = cond[r] end
    return out
  end
  return cond
end

-- A new tensor equal to `full` except that row rows[j] is row j of `part`.
function M.scatter_rows(full, rows, part)
  local out = full:clone()
  for j, r in ipairs(rows) do out:narrow(1, r, 1):copy_(part:narrow(1, j, 1)) end
  return out
end

local function flat(t) return t:is_contiguous() and t:view(#t, -1) or t:reshape(#t, -1) end
M.flat = flat

-- Per-row dot product, norm and standard deviation (population): (N) tensors.
function M.row_dot(a, b) return flat(a):mul(flat(b)):sum(2) end
function M.row_norm(a) return flat(a):norm(2, 2) end
function M.row_std(a) return flat(a):std(2, false, 0) end

-- Per-row cosine similarity (N): dot / (|a| |b|), 1 where both rows are zero.
function M.row_cos(a, b)
  local d, na, nb = M.row_dot(a, b):totable(), M.row_norm(a):totable(), M.row_norm(b):totable()
  local out = {}
  for i = 1, #d do
    local den = na[i] * nb[i]
    out[i] = den > 0 and d[i] / den or 1
  end
  return out
end

-- A model output of kind `from` as kind `to` (the same tensor when they agree).
function M.to_space(out, from, to, x, p)
  if from == to then return out end
  return require("diffuse.models").convert(out, from, to, x, p)
end

-- Lazy access to the methods: diffuse.guidance.cfg{...} etc.
setmetatable(M, { __index = function(_, k)
  load_methods()
  return registry[k] or functions[k]
end })

return M
