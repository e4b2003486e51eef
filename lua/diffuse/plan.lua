-- Plans: a sampling run of the exponential-integrator family described as data.
--
--   { times = { t_1 > t_2 > ... > t_{P+1} },       -- the grid (points 1 .. P+1)
--     steps = { step_1, ..., step_P },              -- step s produces x at times[s + 1]
--     name = "optional description" }
--   step = { base = j,           -- point the expansion starts from (default s, the previous one)
--            pred = "data" | "noise",              -- default "data"
--            order = k,                            -- default 1
--            points = { i, ... },                  -- k - 1 earlier points for the derivatives
--                                                  -- (default: the k - 1 points before base)
--            scale = "taylor" | "dpmsolver" | "bh1" | "bh2" | {linear = c} | {c1, c2, ...},
--            corrector = false | true,             -- UniC, no extra NFE; never on the last step
--            eta = 0,                              -- stochasticity (SDE-DPM-Solver++ / k-diffusion eta)
--            skip = { block, ... },                -- residual blocks left out of the model call
--                                                  -- at this step's point (point s)
--            dc = r,                               -- DC-Solver's dynamic compensation ratio
--            note = "free text" }
--   plan.analytic = true: point 1's model output is the closed form of a Gaussian
--   approximation of the data (no network call).
-- Every point but the last is evaluated once by the model, at the start of its step (or, for
-- a corrector step, at the predicted x), so NFE = #times - 1 (- 1 with analytic).  See
-- docs/plans.md.
local grid = require("diffuse.grid")
local schedule_mod = require("diffuse.schedule")

local M = {}

local step_fields = {
  base = true, pred = true, order = true, points = true, scale = true, corrector = true,
  eta = true, note = true, skip = true, dc = true,
}
local plan_fields = { times = true, steps = true, name = true, analytic = true }
local named_scales = { taylor = true, dpmsolver = true, bh1 = true, bh2 = true, deis = true, ipndm = true }
-- Scales whose whole step is a multistep formula of its own (DEIS, iPNDM): noise prediction
-- from the previous point over the points just before it, no corrector, no noise.
local multistep_scales = { deis = true, ipndm = true }
M.max_order = 6

local function sorted(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = tostring(k) end
  table.sort(out)
  return table.concat(out, ", ")
end

local function is_int(v) return math.type(v) == "integer" or (type(v) == "number" and v == math.floor(v) and v == v and math.abs(v) < 2^53) end

-- Fills a step's defaults (base, pred, order, points, scale, corrector, eta) without checks.
function M.normalize_step(raw, s)
  local st = {
    base = raw.base or s, pred = raw.pred or "data", order = raw.order or 1,
    scale = raw.scale or "taylor", corrector = raw.corrector or false, eta = raw.eta or 0,
  }
  st.skip, st.dc = raw.skip, raw.dc
  st.base = math.tointeger(st.base) or st.base
  st.order = math.tointeger(st.order) or st.order
  if raw.points then
    st.points = {}
    for i, j in ipairs(raw.points) do st.points[i] = math.tointeger(j) or j end
  else
    st.points = {}
    for i = 1, st.order - 1 do st.points[i] = st.base - i end
  end
  return st
end

-- plan.validate(p) -> true | nil, message   (the message names the step)
function M.validate(p)
  if type(p) ~= "table" then return nil, "plan: a plan is a table {times = {...}, steps = {...}}" end
  for k in pairs(p) do
    if not plan_fields[k] then
      return nil, ("plan: unknown field '%s' (valid: %s)"):format(tostring(k), sorted(plan_fields))
    end
  end
  if p.name ~= nil and type(p.name) ~= "string" then return nil, "plan: 'name' must be a string" end
  if p.analytic ~= nil and type(p.analytic) ~= "boolean" then return nil, "plan: 'analytic' must be true or false" end
  local ts = p.times
  if type(ts) ~= "table" or #ts < 2 then return nil, "plan: 'times' must be a list of at least 2 times" end
  for i, t in ipairs(ts) do
    if type(t) ~= "number" or t ~= t or t == math.huge or t < 0 then
      return nil, ("plan: times[%d] = %s is not a finite time >= 0"):format(i, tostring(t))
    end
    if i > 1 and not (t < ts[i - 1]) then
      return nil, ("plan: times must decrease strictly: times[%d] = %.17g after times[%d] = %.17g"):format(i, t, i - 1, ts[i - 1])
    end
  end
  local steps = p.steps
  if type(steps) ~= "table" then return nil, "plan: 'steps' must be a list of step tables" end
  if #steps ~= #ts - 1 then
    return nil, ("plan: %d times need %d steps, got %d"):format(#ts, #ts - 1, #steps)
  end
  for k in pairs(steps) do
    if not is_int(k) or k < 1 or k > #steps then return nil, ("plan: 'steps' has a non-list key '%s'"):format(tostring(k)) end
  end
  local n = #steps
  for s, raw in ipairs(steps) do
    local function bad(msg, ...) return nil, ("plan: step %d: " .. msg):format(s, ...) end
    if type(raw) ~= "table" then return bad("must be a table, got %s", type(raw)) end
    for k in pairs(raw) do
      if not step_fields[k] then return bad("unknown field '%s' (valid: %s)", tostring(k), sorted(step_fields)) end
    end
    if raw.base ~= nil and (not is_int(raw.base) or raw.base < 1 or raw.base > s) then
      return bad("base = %s must be a point index between 1 and %d", tostring(raw.base), s)
    end
    if raw.pred ~= nil and raw.pred ~= "data" and raw.pred ~= "noise" then
      return bad("pred = %s must be \"data\" or \"noise\"", tostring(raw.pred))
    end
    if raw.order ~= nil and (not is_int(raw.order) or raw.order < 1 or raw.order > M.max_order) then
      return bad("order = %s must be an integer from 1 to %d", tostring(raw.order), M.max_order)
    end
    if raw.corrector ~= nil and type(raw.corrector) ~= "boolean" then
      return bad("corrector must be true or false")
    end
    if raw.corrector and s == n then return bad("the last step cannot have a corrector (its point is never evaluated)") end
    if raw.eta ~= nil and (type(raw.eta) ~= "number" or not (raw.eta >= 0) or raw.eta == math.huge) then
      return bad("eta = %s must be a number >= 0", tostring(raw.eta))
    end
    if raw.note ~= nil and type(raw.note) ~= "string" then return bad("note must be a string") end
    if raw.skip ~= nil then
      if type(raw.skip) ~= "table" then return bad("skip must be a list of residual block indices") end
      local seen = {}
      for k, b in pairs(raw.skip) do
        if not is_int(k) or k < 1 or k > #raw.skip then return bad("skip must be a list (it has the key '%s')", tostring(k)) end
        if not is_int(b) or b < 1 then
          return bad("skip[%d] = %s must be a positive integer (a residual block index)", k, tostring(b))
        end
        if seen[b] then return bad("skip lists block %d twice", b) end
        seen[b] = true
      end
      if s == 1 and p.analytic then
        return bad("skip has no effect: with analytic = true point 1 is not evaluated by the network")
      end
    end
    if raw.dc ~= nil then
      if type(raw.dc) ~= "number" or raw.dc ~= raw.dc or math.abs(raw.dc) == math.huge then
        return bad("dc = %s must be a finite number (the compensation ratio)", tostring(raw.dc))
      end
      if s < 2 then return bad("dc needs the model outputs of two points: not on step 1") end
    end
    local sc = raw.scale
    if sc ~= nil then
      if type(sc) == "string" then
        if not named_scales[sc] then
          return bad("unknown scale '%s' (valid: bh1, bh2, deis, dpmsolver, ipndm, taylor, {linear = c}, {c1, c2, ...})", sc)
        end
      elseif type(sc) == "table" then
        if sc.linear ~= nil then
          if type(sc.linear) ~= "number" or next(sc, next(sc)) ~= nil then
            return bad("scale {linear = c} needs exactly one number c")
          end
        else
          for k, v in pairs(sc) do
            if not is_int(k) or k < 1 or k > #sc or type(v) ~= "number" then
              return bad("scale must be a name, {linear = c} or a list of numbers")
            end
          end
        end
      else
        return bad("scale must be a name, {linear = c} or a list of numbers")
      end
    end
    local order = raw.order or 1
    local base = raw.base or s
    if raw.points ~= nil then
      if type(raw.points) ~= "table" then return bad("points must be a list of point indices") end
      if #raw.points ~= order - 1 then
        return bad("order %d needs %d derivative points, got %d", order, order - 1, #raw.points)
      end
      local seen = {}
      for i, j in ipairs(raw.points) do
        if not is_int(j) or j < 1 or j > s then
          return bad("points[%d] = %s must be an evaluated point between 1 and %d", i, tostring(j), s)
        end
        if j == base then return bad("points[%d] = %d is the base point", i, j) end
        if seen[j] then return bad("point %d is listed twice", j) end
        seen[j] = true
      end
    elseif order - 1 > base - 1 then
      return bad("order %d needs %d earlier points before base %d, only %d exist (give 'points' or lower the order)",
        order, order - 1, base, base - 1)
    end
    if multistep_scales[raw.scale] then
      local sc = raw.scale
      if raw.pred ~= "noise" then return bad("scale '%s' needs pred = \"noise\"", sc) end
      if base ~= s then return bad("scale '%s' steps from the previous point (base = %d)", sc, s) end
      for i, j in ipairs(raw.points or {}) do
        if j ~= s - i then
          return bad("scale '%s' uses the points just before the base: points[%d] must be %d", sc, i, s - i)
        end
      end
      if raw.corrector then return bad("scale '%s' has no corrector", sc) end
      if (raw.eta or 0) ~= 0 then return bad("scale '%s' is deterministic (eta = 0)", sc) end
      if sc == "ipndm" and order > 4 then return bad("scale 'ipndm' has orders 1 to 4, got %d", order) end
    end
  end
  return true
end

function M.check(p)
  local ok, err = M.validate(p)
  if not ok then error(err, 2) end
  return p
end

-- Number of model evaluations a plan makes.
function M.nfe(p) return #p.times - 1 - (p.analytic and 1 or 0) end

------------------------------------------------------------------------------------------
-- Text forms: a Lua literal (plan.tostring) or JSON (plan.tojson); plan.parse reads both
-- without executing anything.

local function num(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v == math.floor(v) and math.abs(v) < 1e15 then return ("%d"):format(v) .. ".0" end
  return ("%.17g"):format(v)
end

local function ident(k) return type(k) == "string" and k:match("^[%a_][%w_]*$") end

local key_order = { "name", "analytic", "times", "steps", "base", "pred", "order", "points", "scale", "corrector", "eta",
  "skip", "dc", "note", "linear" }
local key_rank = {}
for i, k in ipairs(key_order) do key_rank[k] = i end

local function keys_of(t)
  local ks = {}
  for k in pairs(t) do if not (is_int(k) and k >= 1 and k <= #t) then ks[#ks + 1] = k end end
  table.sort(ks, function(a, b)
    local ra, rb = key_rank[a] or 100, key_rank[b] or 100
    if ra ~= rb then return ra < rb end
    return tostring(a) < tostring(b)
  end)
  return ks
end

local function encode(v, json, indent)
  local tv = type(v)
  if tv == "number" then return num(v) end
  if tv == "string" then return ("%q"):format(v):gsub("\\\n", "\\n") end
  if tv == "boolean" then return tostring(v) end
  if tv ~= "table" then error("plan: cannot write a " .. tv, 3) end
  local parts = {}
  for i = 1, #v do parts[#parts + 1] = encode(v[i], json, indent) end
  local ks = keys_of(v)
  if json and #ks > 0 and #v > 0 then error("plan: a table mixes list and keys", 3) end
  for _, k in ipairs(ks) do
    local val = encode(v[k], json, indent)
    if json then
      parts[#parts + 1] = ("%q: %s"):format(tostring(k), val)
    elseif ident(k) then
      parts[#parts + 1] = k .. " = " .. val
    else
      parts[#parts + 1] = ("[%s] = %s"):format(encode(k, json), val)
    end
  end
  if json and #ks == 0 then return "[" .. table.concat(parts, ", ") .. "]" end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function render(p, json)
  local pieces = {}
  local open, close = "{", "}"
  local sep = json and ": " or " = "
  local function key(k) return json and ('"' .. k .. '"') or k end
  pieces[#pieces + 1] = open
  local lines = {}
  if p.name then lines[#lines + 1] = "  " .. key("name") .. sep .. encode(p.name, json) end
  if p.analytic ~= nil then lines[#lines + 1] = "  " .. key("analytic") .. sep .. tostring(p.analytic) end
  lines[#lines + 1] = "  " .. key("times") .. sep .. encode(p.times, json)
  local st = {}
  for s, step in ipairs(p.steps) do st[s] = "    " .. encode(step, json) end
  local steps_open = json and "[" or "{"
  local steps_close = json and "]" or "}"
  lines[#lines + 1] = "  " .. key("steps") .. sep .. steps_open .. "\n" .. table.concat(st, ",\n") .. "\n  " .. steps_close
  pieces[#pieces + 1] = table.concat(lines, ",\n")
  pieces[#pieces + 1] = close
  return table.concat(pieces, "\n") .. "\n"
end

function M.tostring(p) return render(p, false) end
function M.tojson(p) return render(p, true) end

-- A small reader for Lua table literals and JSON (no code is run).
function M.parse(text)
  if type(text) ~= "string" then return nil, "plan.parse: text expected" end
  local pos = 1
  local function fail(msg) error({ msg = ("plan: parse error at character %d: %s"):format(pos, msg) }) end
  local function ws()
    while true do
      local a, b = text:find("^[ \t\r\n]+", pos)
      if a then pos = b + 1 end
      if text:sub(pos, pos + 1) == "--" then
        local e = text:find("\n", pos, true)
        pos = e and e + 1 or #text + 1
      elseif not a then
        return
      end
    end
  end
  local value
  local function str()
    local q = text:sub(pos, pos)
    local out = {}
    pos = pos + 1
    while true do
      local c = text:sub(pos, pos)
      if c == "" then fail("unterminated string") end
      if c == q then pos = pos + 1; break end
      if c == "\\" then
        local n = text:sub(pos + 1, pos + 1)
        local map = { n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ['"'] = '"', ["'"] = "'", ["/"] = "/" }
        if map[n] then out[#out + 1] = map[n]; pos = pos + 2
        elseif n:match("%d") then
          local d = text:match("^%d%d?%d?", pos + 1)
          out[#out + 1] = string.char(tonumber(d)); pos = pos + 1 + #d
        else fail("bad escape") end
      else
        out[#out + 1] = c; pos = pos + 1
      end
    end
    return table.concat(out)
  end
  local function number()
    local s = text:match("^-?%d+%.?%d*[eE][-+]?%d+", pos) or text:match("^-?%d+%.?%d*", pos)
      or text:match("^-?%.%d+[eE][-+]?%d+", pos) or text:match("^-?%.%d+", pos)
    if not s then fail("number expected") end
    pos = pos + #s
    if s:find("[.eE]") then return tonumber(s) + 0.0 end
    return math.tointeger(tonumber(s)) or tonumber(s)
  end
  local function tbl(closer)
    pos = pos + 1
    local t, n = {}, 0
    while true do
      ws()
      local c = text:sub(pos, pos)
      if c == closer then pos = pos + 1; return t end
      local k, v
      if c == "[" and closer == "}" then
        pos = pos + 1; ws(); k = value(); ws()
        if text:sub(pos, pos) ~= "]" then fail("']' expected") end
        pos = pos + 1; ws()
        if text:sub(pos, pos) ~= "=" then fail("'=' expected") end
        pos = pos + 1; ws(); v = value()
      else
        local id = closer == "}" and text:match("^[%a_][%w_]*%s*=", pos)
        if id and not text:match("^[%a_][%w_]*%s*==", pos) then
          k = text:match("^[%a_][%w_]*", pos)
          pos = pos + #id; ws(); v = value()
        else
          v = value(); ws()
          if text:sub(pos, pos) == ":" and closer == "}" then
            if type(v) ~= "string" then fail("object keys must be strings") end
            k = v; pos = pos + 1; ws(); v = value()
          end
        end
      end
      if k == nil then n = n + 1; t[n] = v else t[k] = v end
      ws()
      c = text:sub(pos, pos)
      if c == "," or c == ";" then pos = pos + 1
      elseif c ~= closer then fail("',' or '" .. closer .. "' expected") end
    end
  end
  value = function()
    ws()
    local c = text:sub(pos, pos)
    if c == "{" then return tbl("}") end
    if c == "[" then return tbl("]") end
    if c == '"' or c == "'" then return str() end
    for _, w in ipairs({ { "true", true }, { "false", false }, { "nil", nil }, { "null", nil } }) do
      if text:sub(pos, pos + #w[1] - 1) == w[1] and not text:sub(pos + #w[1], pos + #w[1]):match("[%w_]") then
        pos = pos + #w[1]
        return w[2]
      end
    end
    return number()
  end
  local ok, res = pcall(function()
    ws()
    if text:sub(pos, pos + 5) == "return" then pos = pos + 6 end
    local v = value()
    ws()
    if pos <= #text then fail("unexpected text after the plan") end
    return v
  end)
  if not ok then
    if type(res) == "table" then return nil, res.msg end
    error(res, 0)
  end
  return res
end

-- plan.save(p, path [, format]) writes atomically (temp file + rename); format "lua"
-- (default) or "json" (default when path ends in .json).  Returns true or nil, message.
function M.save(p, path, format)
  M.check(p)
  if type(path) ~= "string" then error("bad argument #2 to 'save' (path expected)", 2) end
  format = format or (path:match("%.json$") and "json" or "lua")
  if format ~= "lua" and format ~= "json" then
    error(("bad argument #3 to 'save' (format must be \"lua\" or \"json\", got %s)"):format(tostring(format)), 2)
  end
  local text = format == "json" and M.tojson(p) or ("return " .. M.tostring(p))
  return require("diffuse.util").write_file(path, text)
end

-- plan.load(path) -> plan | nil, message   (validated)
function M.load(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("a")
  f:close()
  local p, perr = M.parse(text)
  if p == nil then return nil, perr end
  local ok, verr = M.validate(p)
  if not ok then return nil, verr end
  return p
end

-- A human-readable table of the plan.
function M.format(p)
  local out = {}
  if p.name then out[#out + 1] = p.name end
  if p.analytic then out[#out + 1] = "analytic first step (point 1 from the Gaussian approximation)" end
  out[#out + 1] = ("%4s  %-12s %-12s %4s  %-5s %5s  %-14s %-12s %-4s %s"):format("step", "from t", "to t", "base",
    "pred", "order", "points", "scale", "corr", "eta")
  for s, raw in ipairs(p.steps) do
    local st = M.normalize_step(raw, s)
    local sc = st.scale
    if type(sc) == "table" then
      sc = sc.linear and ("linear " .. num(sc.linear)) or encode(sc, false)
    end
    local pts = {}
    for i, j in ipairs(st.points) do pts[i] = tostring(j) end
    local extra = {}
    if raw.skip and #raw.skip > 0 then
      local b = {}
      for i, v in ipairs(raw.skip) do b[i] = tostring(v) end
      extra[#extra + 1] = "skip {" .. table.concat(b, ",") .. "}"
    end
    if raw.dc then extra[#extra + 1] = ("dc %.6g"):format(raw.dc) end
    if raw.note then extra[#extra + 1] = raw.note end
    out[#out + 1] = ("%4d  %-12.6g %-12.6g %4d  %-5s %5d  %-14s %-12s %-4s %g%s"):format(s, p.times[s], p.times[s + 1],
      st.base, st.pred, st.order, "{" .. table.concat(pts, ",") .. "}", tostring(sc), st.corrector and "yes" or "no",
      st.eta, #extra > 0 and ("  " .. table.concat(extra, "; ")) or "")
  end
  out[#out + 1] = ("NFE %d"):format(M.nfe(p))
  return table.concat(out, "\n")
end

function M.print(p) print(M.format(p)) end

------------------------------------------------------------------------------------------
-- Builders: named solvers as functions returning plans.  Common options:
--   schedule (required), steps, spacing (default "logSNR"), t_start, t_end, rho, or times.

local function opts_check(fname, o, allowed)
  if type(o) ~= "table" then error(("bad argument #1 to '%s' (options table expected)"):format(fname), 3) end
  local common = { schedule = true, steps = true, spacing = true, t_start = true, t_end = true, rho = true,
    times = true, sigma_min = true, sigma_max = true, _grid = true }
  for k in pairs(o) do
    if not common[k] and allowed[k] == nil then
      local all = {}
      for n in pairs(common) do if n ~= "_grid" then all[n] = true end end
      for n in pairs(allowed) do all[n] = true end
      error(("%s: unknown option '%s'; valid: %s"):format(fname, tostring(k), sorted(all)), 3)
    end
  end
  local r = {}
  for k, v in pairs(allowed) do
    if o[k] == nil then r[k] = v else r[k] = o[k] end
  end
  if o.schedule == nil then error(fname .. ": 'schedule' is required", 3) end
  return r
end

local function one_of(fname, name, v, list)
  for _, x in ipairs(list) do if v == x then return v end end
  error(("%s: %s = %s; valid: %s"):format(fname, name, tostring(v), table.concat(list, ", ")), 3)
end

local function make_grid(o, steps)
  if o._grid and (steps == nil or steps == o.steps) then return o._grid end
  if o.times and steps == nil then return grid.times(o.schedule, { times = o.times }) end
  return grid.times(o.schedule, {
    spacing = o.spacing or "logSNR", steps = steps or o.steps, t_start = o.t_start, t_end = o.t_end,
    rho = o.rho, sigma_min = o.sigma_min, sigma_max = o.sigma_max,
  })
end

local function finish(times, steps, o, name)
  if o.denoise_to_zero and times[#times] > 0 then
    times[#times + 1] = 0
    steps[#steps + 1] = { order = 1, pred = "data", note = "denoise to zero" }
  end
  local p = { name = name, times = times, steps = steps }
  M.check(p)
  return p
end

local function copy_list(t)
  local out = {}
  for i, v in ipairs(t) do out[i] = v end
  return out
end

-- DDIM: first-order data-prediction steps; eta is DDIM's (sigma_eta = eta sigma_t
-- sqrt(1 - e^(-2h))), converted to the plan's per-step eta.
function M.ddim(o)
  local r = opts_check("plan.ddim", o, { eta = 0.0, denoise_to_zero = false })
  local times = copy_list(make_grid(o))
  local sched = o.schedule
  local steps = {}
  for s = 1, #times - 1 do
    local st = { order = 1, pred = "data" }
    if r.eta ~= 0 then
      local h = sched:lambda(times[s + 1]) - sched:lambda(times[s])
      if h == math.huge then
        st.eta = 0 -- a step to sigma = 0 injects no noise
      else
        local v = 1 + r.eta * r.eta * schedule_mod.expm1(-2 * h)
        if not (v > 0) then error(("plan.ddim: eta = %g gives a negative variance at step %d"):format(r.eta, s), 2) end
        st.eta = -math.log(v) / (2 * h)
      end
    end
    steps[s] = st
  end
  return finish(times, steps, r, ("ddim eta=%g"):format(r.eta))
end

-- DEIS (diffusers' log-rho multistep) and iPNDM as plans: noise prediction from the previous
-- point over the `order - 1` points before it, with their own step weights (scale "deis" /
-- "ipndm", computed by lua/diffuse/solvers/deis.lua).  Orders warm up from 1; DEIS's
-- lower_order_final (runs of fewer than 15 steps) ends with orders 2 then 1, as diffusers.
local function multistep_plan(fname, o, defaults, max_order, order_at, scale)
  local r = opts_check(fname, o, defaults)
  if not (math.tointeger(r.order) and r.order >= 1 and r.order <= max_order) then
    error(("%s: order = %s must be an integer from 1 to %d"):format(fname, tostring(r.order), max_order), 3)
  end
  local times = copy_list(make_grid(o))
  local n = #times - 1
  local steps = {}
  for s = 1, n do
    local k = order_at(s - 1, n, r)
    local pts = {}
    for j = 1, k - 1 do pts[j] = s - j end
    steps[s] = { pred = "noise", order = k, points = pts, scale = scale }
  end
  return finish(times, steps, {}, ("%s order %d"):format(scale, r.order))
end

function M.deis(o)
  local deis = require("diffuse.solvers.deis")
  return multistep_plan("plan.deis", o, { order = 2, lower_order_final = true }, 3,
    function(s, n, r) return deis.deis_order(s, n, r.order, r.lower_order_final) end, "deis")
end

function M.ipndm(o)
  local deis = require("diffuse.solvers.deis")
  return multistep_plan("plan.ipndm", o, { order = 4 }, 4,
    function(s, _, r) return deis.ipndm_order(s, r.order) end, "ipndm")
end

-- The official DPM-Solver / DPM-Solver++ (dpm_solver_pytorch.py) step sequences.
function M.dpmsolver(o)
  local r = opts_check("plan.dpmsolver", o, {
    algorithm = "dpmsolver", method = "multistep", order = 2, solver_type = "dpmsolver",
    lower_order_final = true, denoise_to_zero = false, euler_at_final = false, eta = 0.0,
  })
  local F = "plan.dpmsolver"
  one_of(F, "algorithm", r.algorithm, { "dpmsolver", "dpmsolver++" })
  one_of(F, "method", r.method, { "multistep", "singlestep", "singlestep_fixed" })
  one_of(F, "solver_type", r.solver_type, { "dpmsolver", "taylor" })
  if not (math.tointeger(r.order) and r.order >= 1 and r.order <= 3) then
    error(("%s: order = %s must be 1, 2 or 3"):format(F, tostring(r.order)), 2)
  end
  if type(r.eta) ~= "number" or r.eta < 0 then error(F .. ": eta must be a number >= 0", 2) end
  local pred = r.algorithm == "dpmsolver++" and "data" or "noise"
  local order = r.order
  local name = ("%s %s order %d (%s)"):format(r.algorithm, r.method, order, r.solver_type)
  local eta = r.eta ~= 0 and r.eta or nil
  if r.method == "multistep" then
    local times = copy_list(make_grid(o))
    local N = #times - 1
    if N < order then error(("%s: multistep order %d needs at least %d steps"):format(F, order, order), 2) end
    local steps = {}
    for s = 1, N do
      local k = math.min(s, order)
      if s >= order and r.lower_order_final and N < 10 then k = math.min(order, N + 1 - s) end
      if r.euler_at_final and s == N then k = 1 end
      local st = { pred = pred, order = k, eta = eta }
      if k == 2 then st.scale = r.solver_type end
      if k == 3 then st.scale = "dpmsolver" end
      steps[s] = st
    end
    return finish(times, steps, r, name)
  end
  -- singlestep: outer steps of orders `orders`, intermediate points inside each
  local sched = o.schedule
  local orders, outer
  local spacing = o.spacing or "logSNR"
  if o.steps == nil then
    outer = copy_list(make_grid(o))
    orders = {}
    for i = 1, #outer - 1 do orders[i] = order end
  elseif r.method == "singlestep_fixed" then
    local K = o.steps // order
    if K < 1 then error(("%s: singlestep_fixed order %d needs at least %d steps"):format(F, order, order), 2) end
    orders = {}
    for i = 1, K do orders[i] = order end
    outer = make_grid({ schedule = sched, spacing = spacing, t_start = o.t_start, t_end = o.t_end, rho = o.rho }, K)
  else
    local n = o.steps
    if order == 3 then
      local K = n // 3 + 1
      orders = {}
      local base = (n % 3 == 0) and (K - 2) or (K - 1)
      for i = 1, base do orders[i] = 3 end
      if n % 3 == 0 then orders[#orders + 1] = 2; orders[#orders + 1] = 1
      elseif n % 3 == 1 then orders[#orders + 1] = 1
      else orders[#orders + 1] = 2 end
    elseif order == 2 then
      orders = {}
      for i = 1, n // 2 do orders[i] = 2 end
      if n % 2 == 1 then orders[#orders + 1] = 1 end
    else
      orders = {}
      for i = 1, n do orders[i] = 1 end
    end
    if spacing == "logSNR" then
      outer = make_grid({ schedule = sched, spacing = spacing, t_start = o.t_start, t_end = o.t_end }, #orders)
    else
      local full = make_grid(o)
      outer = { full[1] }
      local c = 1
      for i, k in ipairs(orders) do c = c + k; outer[i + 1] = full[c] end
    end
  end
  if r.euler_at_final then orders[#orders] = 1 end
  local times, steps = { outer[1] }, {}
  for i, k in ipairs(orders) do
    local s_t, t_t = outer[i], outer[i + 1]
    local inner
    if grid.time_spacings[spacing] and sched:sigma(t_t) > 0 then
      inner = grid.times(sched, { spacing = spacing, steps = k, t_start = s_t, t_end = t_t })
    else
      inner = { s_t }
      if sched:sigma(t_t) > 0 then
        local l0, l1 = sched:lambda(s_t), sched:lambda(t_t)
        for j = 1, k - 1 do inner[j + 1] = sched:t_of_lambda(l0 + (l1 - l0) * j / k) end
      else
        local h0 = sched:sigma_hat(s_t)
        for j = 1, k - 1 do inner[j + 1] = sched:t_of_sigma_hat(h0 * (1 - j / k)) end
      end
      inner[k + 1] = t_t
    end
    local b = #times -- index of the outer start point
    for j = 2, k + 1 do times[#times + 1] = inner[j] end
    local tag = ("DPM-Solver-%d"):format(k)
    if k == 1 then
      steps[#steps + 1] = { pred = pred, order = 1, eta = eta, note = tag }
    elseif k == 2 then
      steps[#steps + 1] = { pred = pred, order = 1, eta = eta, note = tag .. " s1" }
      steps[#steps + 1] = { base = b, pred = pred, order = 2, points = { b + 1 }, scale = r.solver_type, eta = eta,
        note = tag }
    else
      steps[#steps + 1] = { pred = pred, order = 1, eta = eta, note = tag .. " s1" }
      steps[#steps + 1] = { base = b, pred = pred, order = 2, points = { b + 1 }, scale = "taylor", eta = eta,
        note = tag .. " s2" }
      if r.solver_type == "dpmsolver" then
        steps[#steps + 1] = { base = b, pred = pred, order = 2, points = { b + 2 }, scale = "taylor", eta = eta,
          note = tag }
      else
        steps[#steps + 1] = { base = b, pred = pred, order = 3, points = { b + 1, b + 2 }, scale = "taylor", eta = eta,
          note = tag }
      end
    end
  end
  return finish(times, steps, r, name)
end

-- The official UniPC (uni_pc.py) multistep: predictor of order k (warm-up with lower
-- orders), corrector UniC on every step but the last (unless disabled).
--   disable_corrector = false | true | {step indices}
function M.unipc(o)
  local F = "plan.unipc"
  local r = opts_check(F, o, { variant = "bh1", order = 2, prediction = "data", lower_order_final = true,
    disable_corrector = false, denoise_to_zero = false })
  one_of(F, "variant", r.variant, { "bh1", "bh2" })
  one_of(F, "prediction", r.prediction, { "data", "noise" })
  if not (math.tointeger(r.order) and r.order >= 1 and r.order <= 3) then
    error(("%s: order = %s must be 1, 2 or 3"):format(F, tostring(r.order)), 2)
  end
  local off = {}
  if r.disable_corrector == true then
    setmetatable(off, { __index = function() return true end })
  elseif type(r.disable_corrector) == "table" then
    for _, s in ipairs(r.disable_corrector) do off[s] = true end
  elseif r.disable_corrector ~= false then
    error(F .. ": disable_corrector must be false, true or a list of step indices", 2)
  end
  local times = copy_list(make_grid(o))
  local N = #times - 1
  if N < r.order then error(("%s: order %d needs at least %d steps"):format(F, r.order, r.order), 2) end
  local steps = {}
  for s = 1, N do
    local k = math.min(s, r.order)
    if s >= r.order and r.lower_order_final then k = math.min(r.order, N + 1 - s) end
    steps[s] = { pred = r.prediction, order = k, scale = r.variant, corrector = (s < N) and not off[s] }
  end
  return finish(times, steps, r, ("unipc %s %s order %d"):format(r.variant, r.prediction, r.order))
end

-- plan.build(name, opts): the plan of any named solver of the family ("dpmsolver++_3m", ...).
function M.build(name, o)
  local ex = require("diffuse.solvers.exponential")
  local def = ex.named[name]
  if not def then
    local names = {}
    for n in pairs(ex.named) do names[#names + 1] = n end
    table.sort(names)
    error(("plan.build: unknown solver '%s'; valid: %s"):format(tostring(name), table.concat(names, ", ")), 2)
  end
  local args = {}
  for k, v in pairs(o or {}) do
    if def[3][k] == nil and def[2][k] ~= nil then
      error(("plan.build: option '%s' is fixed for %s"):format(k, name), 2)
    end
    args[k] = v
  end
  for k, v in pairs(def[2]) do args[k] = v end
  return M[def[1]](args)
end

return M
