-- Reductions checked against plain Lua computations on totable() values, for every dim of
-- 1-d to 4-d tensors, with and without keepdim, on contiguous and strided views.
local H = require("helper")
local diffuse = H.diffuse

local inf, nan = math.huge, 0 / 0

local function isnan(x) return x ~= x end

---------------------------------------------------------------------------------------------
-- Reference implementations on Lua lists (doubles).
local ref = {}

function ref.sum(l)
  local s = 0
  for i = 1, #l do s = s + l[i] end
  return s
end

function ref.mean(l) return ref.sum(l) / #l end

-- First extremum; the first NaN wins outright.
local function extremum(l, better)
  local best, at = l[1], 1
  if isnan(best) then return best, 1 end
  for i = 2, #l do
    if isnan(l[i]) then return l[i], i end
    if better(l[i], best) then best, at = l[i], i end
  end
  return best, at
end
function ref.max(l) return extremum(l, function(a, b) return a > b end) end
function ref.min(l) return extremum(l, function(a, b) return a < b end) end

function ref.norm(l, p)
  if p == inf then
    local m = 0
    for i = 1, #l do m = math.max(m, math.abs(l[i])) end
    return m
  end
  local s = 0
  for i = 1, #l do s = s + math.abs(l[i]) ^ p end
  return s ^ (1 / p)
end

function ref.logsumexp(l)
  local m = -inf
  for i = 1, #l do m = math.max(m, l[i]) end
  if m == inf or m == -inf then return m end
  local s = 0
  for i = 1, #l do s = s + math.exp(l[i] - m) end
  return m + math.log(s)
end

function ref.var(l, correction)
  correction = correction or 1
  local mean, ss = ref.mean(l), 0
  for i = 1, #l do ss = ss + (l[i] - mean) ^ 2 end
  return ss / math.max(0, #l - correction)
end

function ref.std(l, correction) return math.sqrt(ref.var(l, correction)) end

---------------------------------------------------------------------------------------------
-- Nested-table helpers.
local function shape_of(tbl)
  local s, t = {}, tbl
  while type(t) == "table" do s[#s + 1] = #t; t = t[1] end
  return s
end

local function get(tbl, idx)
  local t = tbl
  for i = 1, #idx do t = t[idx[i]] end
  return t
end

local function flat(tbl, out)
  out = out or {}
  if type(tbl) ~= "table" then out[#out + 1] = tbl; return out end
  for i = 1, #tbl do flat(tbl[i], out) end
  return out
end

-- Nested table of the given shape with f(multi-index) at each position.
local function build(shape, f, depth, idx)
  depth, idx = depth or 1, idx or {}
  local out = {}
  for i = 1, shape[depth] do
    idx[depth] = i
    if depth == #shape then out[i] = f(idx) else out[i] = build(shape, f, depth + 1, idx) end
  end
  idx[depth] = nil
  return out
end

-- Reduce a nested table along dim with fn(list) -> value, index; returns values and indices
-- nested like the result tensor (dim removed or kept as 1; a 1-d input gives shape {1}).
local function ref_dim(tbl, dim, keepdim, fn)
  local shape = shape_of(tbl)
  local out = {}
  for i = 1, #shape do
    if i ~= dim then out[#out + 1] = shape[i] elseif keepdim then out[#out + 1] = 1 end
  end
  local scalar = #out == 0
  if scalar then out = { 1 } end
  local function at(oidx, want_index)
    local full, j = {}, 1
    for i = 1, #shape do
      if i == dim then
        full[i] = 0
        if keepdim then j = j + 1 end
      else
        full[i] = oidx[j]; j = j + 1
      end
    end
    local list = {}
    for k = 1, shape[dim] do
      full[dim] = k
      list[k] = get(tbl, full)
    end
    local v, ix = fn(list)
    if want_index then return ix end
    return v
  end
  if scalar then
    return { at({}, false) }, { at({}, true) }
  end
  return build(out, function(o) return at(o, false) end), build(out, function(o) return at(o, true) end)
end

---------------------------------------------------------------------------------------------
-- Test tensors and layouts.
math.randomseed(1234)

-- Values on a coarse grid so ties happen (index semantics) but sums stay exact-ish.
local function random_values(shape)
  return build(shape, function() return math.random(-8, 8) * 0.25 end)
end

-- Each layout returns a tensor whose values are those of tbl (same shape), laid out differently.
local layouts = {
  contiguous = function(tbl) return diffuse.tensor(tbl) end,
  strided = function(tbl) return H.strided(diffuse.tensor(tbl)) end,
  -- rows of a bigger tensor: narrow of the first dimension (contiguous, offset data)
  rows = function(tbl)
    local s = shape_of(tbl)
    local big = s
    big = { table.unpack(s) }
    big[1] = s[1] + 2
    local t = diffuse.zeros(big):fill_(99)
    local v = t:narrow(1, 2, s[1])
    v:copy_(diffuse.tensor(tbl))
    return v
  end,
  -- a narrow of the last dimension of a wider tensor (gaps between rows)
  narrow = function(tbl)
    local s = shape_of(tbl)
    local big = { table.unpack(s) }
    big[#s] = s[#s] + 3
    if #s == 1 then big = { s[1], 3 } end -- a column of a (n, 3) tensor
    local t = diffuse.zeros(big):fill_(99)
    local v = #s == 1 and t:select(2, 2) or t:narrow(#s, 2, s[#s])
    v:copy_(diffuse.tensor(tbl))
    return v
  end,
  -- a select on a trailing dimension of size 2: every stride is doubled (needs ndim < 4)
  select = function(tbl)
    local s = shape_of(tbl)
    if #s >= 4 then return nil end
    local big = { table.unpack(s) }
    big[#big + 1] = 2
    local t = diffuse.zeros(big):fill_(-99)
    local v = t:select(#big, 2)
    v:copy_(diffuse.tensor(tbl))
    return v
  end,
  -- first and last dimensions swapped in memory: dims cannot be merged into runs
  permuted = function(tbl)
    local s = shape_of(tbl)
    if #s < 3 then return nil end
    return diffuse.tensor(tbl):transpose(1, #s):contiguous():transpose(1, #s)
  end,
}
local layout_names = { "contiguous", "rows", "strided", "narrow", "select", "permuted" }

local shapes = { { 7 }, { 3, 5 }, { 2, 3, 4 }, { 2, 3, 2, 3 } }

-- name, reference fn(list) -> value[, index], method call (t, dim, keepdim)
local ops = {
  { "sum", ref.sum, function(t, ...) return t:sum(...) end },
  { "mean", ref.mean, function(t, ...) return t:mean(...) end },
  { "logsumexp", ref.logsumexp, function(t, ...) return t:logsumexp(...) end },
  { "norm2", function(l) return ref.norm(l, 2) end, function(t, ...) return t:norm(2, ...) end },
  { "norm1", function(l) return ref.norm(l, 1) end, function(t, ...) return t:norm(1, ...) end },
  { "norminf", function(l) return ref.norm(l, inf) end, function(t, ...) return t:norm(inf, ...) end },
  { "norm3.5", function(l) return ref.norm(l, 3.5) end, function(t, ...) return t:norm(3.5, ...) end },
  { "norm0.5", function(l) return ref.norm(l, 0.5) end, function(t, ...) return t:norm(0.5, ...) end },
  { "var", ref.var, function(t, d, k) return t:var(d, k) end },
  { "var0", function(l) return ref.var(l, 0) end, function(t, d, k) return t:var(d, k, 0) end },
  { "std", ref.std, function(t, d, k) return t:std(d, k) end },
  { "std0", function(l) return ref.std(l, 0) end, function(t, d, k) return t:std(d, k, 0) end },
}

describe("reductions against Lua on every dim", function()
  for _, shape in ipairs(shapes) do
    for _, lname in ipairs(layout_names) do
      local label = ("%s %s"):format(table.concat(shape, "x"), lname)
      it(label, function()
        local tbl = random_values(shape)
        local t = layouts[lname](tbl)
        if not t then return end
        assert.same(tbl, t:totable())
        if lname ~= "contiguous" and lname ~= "rows" then assert.is_false(t:is_contiguous()) end
        local all = flat(tbl)
        for _, op in ipairs(ops) do
          local name, fn, call = op[1], op[2], op[3]
          -- whole tensor
          local whole = call(t)
          assert.is_number(whole)
          assert.allclose(fn(all), whole, 1e-5, 1e-5)
          for dim = 1, #shape do
            for _, keep in ipairs({ false, true }) do
              local want = ref_dim(tbl, dim, keep, fn)
              local ok, msg = H.close(want, call(t, dim, keep), 1e-5, 1e-5)
              assert(ok, ("%s dim %d keepdim %s: %s"):format(name, dim, tostring(keep), msg))
            end
            -- negative dim counts from the end; nil keepdim is false
            assert.allclose(ref_dim(tbl, dim, false, fn), call(t, dim - #shape - 1), 1e-5, 1e-5)
          end
        end
        -- min / max / argmin / argmax: values exact, 1-based first indices
        for _, name in ipairs({ "max", "min" }) do
          local v, i = ref[name](all)
          assert.equal(v, t[name](t))
          assert.equal(i, t["arg" .. name](t))
          assert.is_true(math.type(t["arg" .. name](t)) == "integer")
          for dim = 1, #shape do
            for _, keep in ipairs({ false, true }) do
              local wv, wi = ref_dim(tbl, dim, keep, ref[name])
              local gv, gi = t[name](t, dim, keep)
              assert.same(wv, gv:totable())
              assert.same(wi, gi:totable())
              assert.same(wi, t["arg" .. name](t, dim, keep):totable())
            end
          end
        end
      end)
    end
  end

  it("column blocks wider than one task and long runs", function()
    for _, shape in ipairs({ { 37, 600 }, { 600, 37 }, { 3, 300, 5 }, { 2000, 3 } }) do
      local tbl = diffuse.tensor(build(shape, function() return math.random() * 4 - 2 end)):totable()
      for _, lname in ipairs({ "contiguous", "strided" }) do
        local t = layouts[lname](tbl)
        for dim = 1, #shape do
          assert.allclose(ref_dim(tbl, dim, false, ref.sum), t:sum(dim), 1e-4, 1e-5)
          assert.allclose(ref_dim(tbl, dim, false, ref.var), t:var(dim), 1e-5, 1e-4)
          assert.allclose(ref_dim(tbl, dim, false, ref.logsumexp), t:logsumexp(dim), 1e-5, 1e-5)
          local wv, wi = ref_dim(tbl, dim, false, ref.max)
          local gv, gi = t:max(dim)
          assert.same(wv, gv:totable())
          assert.same(wi, gi:totable())
        end
      end
    end
  end)

  it("a 1-d tensor reduced along its only dim gives shape (1)", function()
    local a = diffuse.arange(5)
    assert.same({ 1 }, a:sum(1):shape())
    assert.same({ 10 }, a:sum(1):totable())
    assert.same({ 1 }, a:sum(1, true):shape())
    local v, i = a:max(1)
    assert.same({ 4 }, v:totable())
    assert.same({ 5 }, i:totable())
    assert.same({ 1 }, a:argmin(-1):totable())
  end)
end)

describe("reduction index semantics", function()
  it("ties keep the first index, 1-based, row-major for the whole tensor", function()
    local a = diffuse.tensor({ { 1, 3, 3 }, { 3, 0, 0 } })
    assert.equal(2, a:argmax())
    assert.equal(5, a:argmin())
    assert.same({ 2, 1 }, a:argmax(2):totable())
    assert.same({ 1, 2, 2 }, a:argmin(1):totable())
    local v, i = a:max(1, true)
    assert.same({ { 3, 3, 3 } }, v:totable())
    assert.same({ { 2, 1, 1 } }, i:totable())
  end)

  it("NaN propagates through sum, mean, min and max; the first NaN wins argmax/argmin", function()
    local a = diffuse.tensor({ 1, nan, 7, nan, -3 })
    assert.is_true(isnan(a:sum()))
    assert.is_true(isnan(a:mean()))
    assert.is_true(isnan(a:max()))
    assert.is_true(isnan(a:min()))
    assert.equal(2, a:argmax())
    assert.equal(2, a:argmin())
    local m = diffuse.tensor({ { 1, 5 }, { nan, 2 }, { 4, nan } })
    local v, i = m:max(1)
    assert.is_true(isnan(v:totable()[1]) and isnan(v:totable()[2]))
    assert.same({ 2, 3 }, i:totable())
    assert.same({ 2, 1, 2 }, m:argmax(2):totable())
    assert.same({ 1, 1, 2 }, m:argmin(2):totable())
    local s = m:sum(2):totable()
    assert.equal(6, s[1])
    assert.is_true(isnan(s[2]) and isnan(s[3]))
    assert.is_true(isnan(m:norm()))
    assert.is_true(isnan(m:norm(inf)))
    assert.is_true(isnan(m:logsumexp()))
  end)

  it("long runs split across threads keep first-index semantics", function()
    local n = 300000
    local t = diffuse.zeros(n)
    t:set(200001, 5); t:set(250000, 5); t:set(90000, -5); t:set(299999, -5)
    assert.equal(200001, t:argmax())
    assert.equal(90000, t:argmin())
    assert.equal(5, t:max())
    assert.same({ 200001 }, t:argmax(1):totable())
    t:set(280000, nan); t:set(290000, nan)
    assert.equal(280000, t:argmax())
    assert.equal(280000, t:argmin())
    assert.is_true(isnan(t:max()))
    assert.is_true(isnan(t:sum()))
  end)
end)

describe("reduction accuracy", function()
  it("sums a million floats in double", function()
    local x = diffuse.full({ 1000000 }, 0.1)
    local f = x:select(1, 1) -- 0.1 rounded to float32
    assert.allclose(1e6 * f, x:sum(), 0, 1e-12)
    assert.allclose(f, x:mean(), 0, 1e-12)
    assert.allclose(math.sqrt(1e6) * f, x:norm(), 0, 1e-12)
    local m = diffuse.full({ 1000, 1000 }, 0.1)
    assert.allclose(diffuse.full({ 1000 }, 1000 * f), m:sum(1), 0, 1e-7)
    assert.allclose(diffuse.full({ 1000 }, 1000 * f), m:sum(2), 0, 1e-7)
  end)

  it("variance of 1e6 values around 1e4 with spread 1 (no cancellation)", function()
    local n, vals = 1000000, {}
    for i = 1, n do vals[i] = 1e4 + (math.random() - 0.5) * 2 end
    local x = diffuse.tensor(vals)
    local exact = ref.var(x:totable(), 1) -- the float32 values, in double, two-pass
    assert.allclose(exact, x:var(), 0, 1e-5)
    assert.allclose(exact * (n - 1) / n, x:var(nil, nil, 0), 0, 1e-5)
    assert.allclose(math.sqrt(exact), x:std(), 0, 1e-5)
    local rows = x:view(1000, 1000)
    local r1 = ref_dim(rows:totable(), 2, false, ref.var)
    assert.allclose(r1, rows:var(2), 0, 1e-5)
    assert.allclose(ref_dim(rows:totable(), 1, false, ref.var), rows:var(1), 0, 1e-5)
  end)

  it("logsumexp is stable for large values, -inf rows and +inf", function()
    assert.allclose(1000 + math.log(2), diffuse.tensor({ 1000, 1000 }):logsumexp(), 0, 1e-12)
    assert.allclose(-1000 + math.log(3), diffuse.tensor({ -1000, -1000, -1000 }):logsumexp(), 0, 1e-12)
    assert.equal(-inf, diffuse.tensor({ -inf, -inf }):logsumexp())
    assert.equal(inf, diffuse.tensor({ 1, inf, -inf }):logsumexp())
    local m = diffuse.tensor({ { 1000, 999 }, { -inf, -inf }, { 0, inf }, { 0, 0 } })
    local r = m:logsumexp(2):totable()
    assert.allclose(1000 + math.log(1 + math.exp(-1)), r[1], 0, 1e-6)
    assert.equal(-inf, r[2])
    assert.equal(inf, r[3])
    assert.allclose(math.log(2), r[4], 1e-7)
    local c = m:t():contiguous():logsumexp(1):totable()
    assert.same(r, c)
    assert.equal(-inf, diffuse.zeros(0):logsumexp())
  end)

  it("norm of large and tiny values does not overflow or underflow", function()
    assert.allclose(math.sqrt(2) * 3e38, diffuse.tensor({ 3e38, 3e38 }):norm(), 0, 1e-6)
    assert.allclose(2 ^ (1 / 3) * 3e38, diffuse.tensor({ 3e38, 3e38 }):norm(3), 0, 1e-6)
    assert.allclose(2 ^ (1 / 7) * 1e-30, diffuse.tensor({ 1e-30, 1e-30 }):norm(7), 0, 1e-6)
    assert.equal(0, diffuse.zeros(4):norm(3))
    assert.equal(inf, diffuse.tensor({ 1, inf }):norm(3))
  end)
end)

describe("reductions of empty tensors", function()
  it("sum 0, mean NaN, min and max raise", function()
    local e = diffuse.zeros(0)
    assert.equal(0, e:sum())
    assert.is_true(isnan(e:mean()))
    assert.equal(0, e:norm())
    assert.is_true(isnan(e:var()))
    assert.matches("max of an empty tensor", H.error_of(e.max, e))
    assert.matches("min of an empty tensor", H.error_of(e.min, e))
    assert.matches("argmax of an empty tensor", H.error_of(e.argmax, e))
    local z = diffuse.zeros(0, 3)
    assert.same({ 0, 0, 0 }, z:sum(1):totable())
    assert.same({ 0 }, z:sum(2):shape())
    assert.same({ 0, 1 }, z:max(2, true):shape())
    assert.matches("max of an empty tensor", H.error_of(z.max, z, 1))
    assert.matches("argmin of an empty tensor", H.error_of(z.argmin, z, 1))
    local m = z:mean(1):totable()
    assert.is_true(isnan(m[1]))
  end)

  it("variance with n <= correction is NaN for one element", function()
    assert.is_true(isnan(diffuse.tensor({ 3 }):var()))
    assert.equal(0, diffuse.tensor({ 3 }):var(nil, nil, 0))
  end)
end)

describe("reduction argument errors", function()
  local a = diffuse.tensor({ { 1, 2 }, { 3, 4 } })
  it("dimension out of range", function()
    assert.matches("dimension 3 out of range for a 2%-d tensor", H.error_of(function() return a:sum(3) end))
    assert.matches("dimension 0 out of range", H.error_of(function() return a:max(0) end))
    assert.matches("dimension %-3 out of range", H.error_of(function() return a:var(-3) end))
    assert.matches("dimension 5 out of range", H.error_of(function() return a:norm(2, 5) end))
    assert.matches("number expected", H.error_of(function() return a:sum("x") end))
  end)
  it("bad p, keepdim and correction", function()
    for _, p in ipairs({ 0, -1, nan }) do
      assert.matches("p must be a positive number", H.error_of(function() return a:norm(p) end))
    end
    assert.matches("number expected", H.error_of(function() return a:norm("two") end))
    assert.matches("boolean %(keepdim%) expected, got number", H.error_of(function() return a:sum(1, 1) end))
    assert.matches("correction must be a non%-negative number",
      H.error_of(function() return a:var(1, false, -1) end))
    assert.matches("diffuse.Tensor expected", H.error_of(a.sum, {}))
  end)
end)
