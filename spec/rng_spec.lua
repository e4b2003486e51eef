local H = require("helper")
local diffuse = H.diffuse
local core = require("diffuse.core")

-- ---------------------------------------------------------------------------------------
-- Independent reference: the documented layout recomputed in Lua from the raw Philox hook.
-- Element j (0-based) of global row i (0-based) at draw k, seed s uses the Philox block with
-- counter (j // 4, k, i mod 2^32, i // 2^32) and key (s mod 2^32, s // 2^32), word j % 4.
-- ---------------------------------------------------------------------------------------
local M32 = 0xffffffff

local function to_f32(x) return (string.unpack("f", string.pack("f", x))) end

local function words(s, i, k, block)
  return { core._philox({ block, k, i & M32, (i >> 32) & M32 }, { s & M32, (s >> 32) & M32 }) }
end

-- The documented Box-Muller, computed with Lua's (libm's) log, sqrt, sin and cos in double.
-- The angle 2 pi b / 2^32 is reduced exactly first, in integers: b = quad 2^30 + e with e in
-- [-2^29, 2^29), so cos and sin only see |x| <= pi/4 (an unreduced angle near pi/2 would lose
-- the relative accuracy of cos there, in the reference, not in the implementation).
local function ref_normal(s, i, k, j)
  local w = words(s, i, k, j // 4)
  local q = j % 4
  local a, b = w[q - q % 2 + 1], w[q - q % 2 + 2]
  local u = (a + 0.5) * 2.0 ^ -32 -- exact in double
  local r = math.sqrt(-2 * math.log(u))
  local quad = ((b + 0x20000000) >> 30) & 3
  local e = b - (quad << 30)
  if e >= 0x80000000 then e = e - 0x100000000 end
  local x = e * (2 * math.pi * 2.0 ^ -32)
  local c, sn = math.cos(x), math.sin(x)
  local cq = ({ c, -sn, -c, sn })[quad + 1]
  local sq = ({ sn, c, -sn, -c })[quad + 1]
  return to_f32(q % 2 == 0 and r * cq or r * sq)
end

-- Distance in float32 ulps (the number of floats between a and b, plus one if they differ).
local function ord(x)
  local i = string.unpack("<i4", string.pack("<f", x))
  return i < 0 and -(i & 0x7fffffff) or i
end
local function ulps(a, b) return math.abs(ord(a) - ord(b)) end

local function ref_uniform(s, i, k, j)
  local w = words(s, i, k, j // 4)
  return (w[j % 4 + 1] >> 8) * 2.0 ^ -24
end

-- Reference tensor (as a nested table) for a shape, by rows of the flattened trailing dims.
local function reference(f, shape, s, offset, k)
  local rowlen = 1
  for d = 2, #shape do rowlen = rowlen * shape[d] end
  local flat = {}
  for r = 0, shape[1] - 1 do
    for j = 0, rowlen - 1 do flat[#flat + 1] = f(s, offset + r, k, j) end
  end
  return flat
end

local function flat_of(t) return H.flatten(t) end

local function same_values(a, b)
  local fa, fb = flat_of(a), flat_of(b)
  if #fa ~= #fb then return false end
  for i = 1, #fa do if fa[i] ~= fb[i] then return false end end
  return true
end

local function count_equal(a, b)
  local fa, fb, n = flat_of(a), flat_of(b), 0
  for i = 1, #fa do if fa[i] == fb[i] then n = n + 1 end end
  return n
end

describe("Philox4x32-10", function()
  -- Known-answer vectors published with Random123 (kat_vectors): counter, key -> output.
  it("matches the Random123 known-answer vectors", function()
    assert.same({ 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 },
      { core._philox({ 0, 0, 0, 0 }, { 0, 0 }) })
    assert.same({ 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd },
      { core._philox({ M32, M32, M32, M32 }, { M32, M32 }) })
    assert.same({ 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1 },
      { core._philox({ 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344 }, { 0xa4093822, 0x299f31d0 }) })
  end)

  it("checks the hook's arguments", function()
    assert.matches("counter must have 4 entries", H.error_of(core._philox, { 1, 2 }, { 0, 0 }))
    assert.matches("key entry 2 must be an integer in 0..2%^32%-1",
      H.error_of(core._philox, { 0, 0, 0, 0 }, { 0, 2 ^ 32 }))
    assert.matches("table expected", H.error_of(core._philox, 3, { 0, 0 }))
  end)
end)

describe("randn / rand layout", function()
  -- Tolerance: the implementation evaluates log, sin and cos with polynomials in double, with
  -- a relative error below 1e-14 before the one rounding to float32; the reference (libm in
  -- double) is within ~1e-15.  Two numbers that close round to the same float or to adjacent
  -- floats, so every value is within 1 ulp of the reference.  They differ at all only when
  -- the exact value lies within ~1e-14 (relative) of a rounding boundary of float32, which has
  -- probability ~1e-14 * 2^24 ~ 2e-7 per value: over the ~10^4 values here, two or more
  -- differences would have probability ~1e-6.  (A float-precision log or sincos, 1e-7, would
  -- make thousands of values differ.)
  it("randn follows the documented counter layout and Box-Muller, to 1 ulp", function()
    local n, differ, worst = 0, 0, 0
    for _, c in ipairs({
      { shape = { 3, 5 }, s = 7, off = 4, k = 2 },
      { shape = { 6 }, s = 0, off = 0, k = 0 },
      { shape = { 2, 3, 2, 2 }, s = 2 ^ 40 + 5, off = 2 ^ 32 - 1, k = 9 }, -- rows cross 2^32
      { shape = { 2, 7 }, s = -1, off = 0, k = 2 ^ 32 - 1 },
      { shape = { 3, 2000 }, s = 12345, off = 77, k = 3 },                   -- long rows
      { shape = { 5, 3, 67 }, s = 99, off = 2 ^ 32 - 2, k = 1 },             -- rows of 201
      { shape = { 4000 }, s = 5, off = 10, k = 6 },                          -- rows of 1
    }) do
      local s, off, k = math.tointeger(c.s), math.tointeger(c.off), math.tointeger(c.k)
      local got = flat_of(diffuse.randn(c.shape, { seed = s, offset = off, draw = k }))
      local want = reference(ref_normal, c.shape, s, off, k)
      assert.equal(#want, #got)
      for x = 1, #want do
        local d = ulps(want[x], got[x])
        if d > worst then worst = d end
        if d > 0 then differ = differ + 1 end
      end
      n = n + #want
    end
    assert.is_true(n > 10000)
    assert.is_true(worst <= 1, "largest deviation " .. worst .. " ulps")
    assert.is_true(differ <= 1, differ .. " of " .. n .. " values differ from the reference")
  end)

  it("rand is the top 24 bits of each Philox word times 2^-24, exactly", function()
    for _, c in ipairs({
      { shape = { 4, 9 }, s = 123, off = 10, k = 5 },
      { shape = { 3, 2000 }, s = -7, off = 2 ^ 32 - 2, k = 2 ^ 32 - 1 },
      { shape = { 5, 3, 67 }, s = 1, off = 0, k = 0 },
      { shape = { 3000 }, s = 2 ^ 50, off = 5, k = 8 },
    }) do
      local s, off, k = math.tointeger(c.s), math.tointeger(c.off), math.tointeger(c.k)
      local t = diffuse.rand(c.shape, { seed = s, offset = off, draw = k })
      assert.same(reference(ref_uniform, c.shape, s, off, k), flat_of(t))
    end
  end)

  it("accepts the shape as integers, with or without an options table", function()
    assert.same(diffuse.randn({ 3, 4 }):totable(), diffuse.randn(3, 4):totable())
    assert.same(diffuse.randn({ 3, 4 }, { seed = 5 }):totable(), diffuse.randn(3, 4, { seed = 5 }):totable())
    assert.same(diffuse.rand({ 2, 2 }, { seed = 5 }):totable(), diffuse.rand(2, 2, { seed = 5 }):totable())
    assert.same({ 0, 3 }, diffuse.randn(0, 3):shape())
  end)

  it("a row's values do not depend on the batch size", function()
    for _, s in ipairs({ 0, 1, 987654321 }) do
      local small = diffuse.randn({ 64, 2 }, { seed = s })
      local big = diffuse.randn({ 1000, 2 }, { seed = s })
      assert.same(big[10]:totable(), small[10]:totable())
      assert.same(big:narrow(1, 1, 64):totable(), small:totable())
    end
  end)

  it("drawing rows in pieces with offset equals drawing them at once", function()
    for _, f in ipairs({ diffuse.randn, diffuse.rand }) do
      local whole = f({ 1000, 3, 2 }, { seed = 31, draw = 4 })
      local pieces = {}
      local first = 0
      for _, n in ipairs({ 1, 136, 463, 400 }) do
        local part = f({ n, 3, 2 }, { seed = 31, draw = 4, offset = first })
        for r = 1, n do pieces[#pieces + 1] = part[r]:totable() end
        first = first + n
      end
      assert.equal(1000, first)
      assert.same(whole:totable(), pieces)
    end
  end)

  it("different draw numbers and seeds give different values", function()
    local base = diffuse.randn({ 100, 8 }, { seed = 3, draw = 0 })
    local other_draw = diffuse.randn({ 100, 8 }, { seed = 3, draw = 1 })
    local other_seed = diffuse.randn({ 100, 8 }, { seed = 4, draw = 0 })
    local high_seed = diffuse.randn({ 100, 8 }, { seed = 3 + (1 << 32), draw = 0 })
    assert.equal(0, count_equal(base, other_draw))
    assert.equal(0, count_equal(base, other_seed))
    assert.equal(0, count_equal(base, high_seed))
    -- rows differ from each other, too
    assert.equal(0, count_equal(base:narrow(1, 1, 50), base:narrow(1, 51, 50)))
    -- and the defaults are seed 0, offset 0, draw 0
    assert.same(diffuse.randn({ 5, 5 }, { seed = 0, offset = 0, draw = 0 }):totable(), diffuse.randn(5, 5):totable())
  end)

  it("values depend on the shape only through the row length", function()
    local a = diffuse.randn({ 5, 2, 3 }, { seed = 4 })
    local b = diffuse.randn({ 5, 6 }, { seed = 4 })
    assert.same(b:totable(), a:reshape(5, 6):totable())
  end)

  it("an integral float seed is the same seed", function()
    assert.same(diffuse.randn(4, { seed = 2 }):totable(), diffuse.randn(4, { seed = 2.0 }):totable())
  end)

  it("rejects bad options with clear messages", function()
    assert.matches("unknown option 'sed' %(expected seed, offset, draw%)", H.error_of(diffuse.randn, 2, { sed = 1 }))
    assert.matches("option 'seed' must be an integer, got 1.5", H.error_of(diffuse.randn, 2, { seed = 1.5 }))
    assert.matches("option 'seed' must be an integer, got string", H.error_of(diffuse.rand, { 2 }, { seed = "1" }))
    assert.matches("option 'offset' must be a non%-negative integer", H.error_of(diffuse.randn, 2, { offset = -1 }))
    assert.matches("option 'draw' must be an integer in 0..2%^32%-1", H.error_of(diffuse.randn, 2, { draw = -1 }))
    assert.matches("option 'draw' must be an integer in 0..2%^32%-1", H.error_of(diffuse.randn, 2, { draw = 1 << 32 }))
    assert.matches("table of options expected, got string", H.error_of(diffuse.randn, 2, "x"))
    assert.matches("unexpected number key in options", H.error_of(diffuse.randn, 2, { 5 }))
    assert.matches("shape entry 1 must be a non%-negative integer", H.error_of(diffuse.randn, { -2 }))
    local t = diffuse.zeros(3)
    assert.matches("unknown option 'mean'", H.error_of(t.normal_, t, { mean = 1 }))
    assert.matches("diffuse.Tensor expected", H.error_of(t.uniform_, 3))
  end)
end)

describe("in-place fills", function()
  it("normal_ and uniform_ give the same values as randn and rand", function()
    local opts = { seed = 9, offset = 3, draw = 2 }
    local t = diffuse.zeros(7, 3, 5)
    assert.equal(t, t:normal_(opts))
    assert.same(diffuse.randn({ 7, 3, 5 }, opts):totable(), t:totable())
    t:uniform_(opts)
    assert.same(diffuse.rand({ 7, 3, 5 }, opts):totable(), t:totable())
    t:normal_()
    assert.same(diffuse.randn(7, 3, 5):totable(), t:totable())
  end)

  it("work on non-contiguous views with the same row semantics", function()
    -- 200x300 is large enough to run threaded
    for _, shape in ipairs({ { 200, 300 }, { 5, 3, 4, 6 }, { 37 } }) do
      local opts = { seed = 77, draw = 1, offset = 2 }
      local v = H.strided(diffuse.zeros(shape))
      assert.is_false(v:is_contiguous())
      v:normal_(opts)
      assert.same(diffuse.randn(shape, opts):totable(), v:totable())
      v:uniform_(opts)
      assert.same(diffuse.rand(shape, opts):totable(), v:totable())
    end
  end)

  it("fill only the view, leaving the rest of the storage alone", function()
    local base = diffuse.zeros(6, 4)
    base:narrow(2, 2, 2):normal_({ seed = 1 })
    local expect = diffuse.randn({ 6, 2 }, { seed = 1 }):totable()
    for r = 1, 6 do
      assert.same({ 0, expect[r][1], expect[r][2], 0 }, base[r]:totable())
    end
  end)
end)

describe("Generator", function()
  it("uses and advances its draw number", function()
    local g = diffuse.Generator(42)
    assert.equal(0, g:draw())
    assert.equal(42, g:seed())
    local a = g:randn(4, 3)
    local b = g:rand({ 4, 3 })
    assert.equal(2, g:draw())
    assert.same(diffuse.randn({ 4, 3 }, { seed = 42, draw = 0 }):totable(), a:totable())
    assert.same(diffuse.rand({ 4, 3 }, { seed = 42, draw = 1 }):totable(), b:totable())
    assert.equal("diffuse.Generator(seed=42, draw=2)", tostring(g))
  end)

  it("clone is independent; set_draw rewinds", function()
    local g = diffuse.Generator(-5)
    g:randn(2)
    local c = g:clone()
    assert.same(g:randn(3, 2):totable(), c:randn(3, 2):totable())
    c:randn(1)
    assert.equal(2, g:draw())
    assert.equal(3, c:draw())
    assert.equal(g, g:set_draw(0))
    assert.same(diffuse.randn({ 2 }, { seed = -5 }):totable(), g:randn(2):totable())
    assert.equal(-5, g:seed())
  end)

  it("accepts an offset so a batch can be drawn in pieces", function()
    local g = diffuse.Generator(8)
    local part = g:randn({ 3, 2 }, { offset = 5 })
    assert.same(diffuse.randn({ 8, 2 }, { seed = 8 }):narrow(1, 6, 3):totable(), part:totable())
  end)

  it("defaults to seed 0 and rejects bad arguments", function()
    assert.equal(0, diffuse.Generator():seed())
    assert.matches("seed must be an integer, got 1.5", H.error_of(diffuse.Generator, 1.5))
    assert.matches("integer seed expected, got string", H.error_of(diffuse.Generator, "7"))
    local g = diffuse.Generator(1)
    assert.matches("unknown option 'seed'", H.error_of(g.randn, g, 2, { seed = 3 }))
    assert.matches("unknown option 'draw'", H.error_of(g.rand, g, { 2 }, { draw = 3 }))
    assert.matches("draw number must be in 0..2%^32%-1", H.error_of(g.set_draw, g, -1))
    assert.matches("diffuse.Generator expected", H.error_of(g.randn, {}, 2))
    g:set_draw(0xffffffff)
    g:randn(1)
    assert.matches("used all 2%^32 draw numbers", H.error_of(g.randn, g, 1))
  end)
end)

describe("threads and instruction sets", function()
  -- Runs a script in a child Lua with OMP_NUM_THREADS (and DIFFUSE_RNG_ISA) set and returns
  -- what it prints.
  local function run(script, threads, isa)
    local cmd = ("OMP_NUM_THREADS=%d DIFFUSE_RNG_ISA=%s LUA_PATH='%s' LUA_CPATH='%s' lua5.4 -e '%s' 2>&1"):format(
      threads, isa or "", package.path, package.cpath, script)
    local p = assert(io.popen(cmd))
    local out = p:read("a")
    p:close()
    return out
  end

  local function child(threads)
    return run([[
local d = require("diffuse")
local t = d.randn({1500, 700}, {seed = 5, draw = 2, offset = 11})
local u = d.zeros(700, 1500):t():uniform_({seed = 6})
local out = {}
for _, x in ipairs({t, u}) do
  local v = x:reshape(-1):totable()
  local s = 0
  for i = 1, #v do s = s + v[i] * (i % 17 + 1) end
  out[#out + 1] = string.format("%.17g %.9g %.9g %.9g", s, v[1], v[#v // 2], v[#v])
end
print(table.concat(out, " "))
]], threads)
  end

  it("results do not depend on the number of threads", function()
    local one, two = child(1), child(2)
    assert.matches("^%-?%d", one) -- a checksum, not an error message
    assert.equal(one, two)
    -- and the child computes what this process computes
    local t = diffuse.randn({ 1500, 700 }, { seed = 5, draw = 2, offset = 11 })
    assert.equal(string.format("%.9g", t:get(1, 1)), one:match("^%S+ (%S+)"))
  end)

  -- The fill is compiled for SSE2 (or plain C), AVX2 and AVX-512F and picks the best the CPU
  -- has; DIFFUSE_RNG_ISA forces one (a variant the CPU lacks falls back to the next one
  -- below).  All must give the same bits: compare an exact hash (FNV-1a over the float32 bit
  -- patterns) of normals and uniforms, contiguous and strided, long rows and rows of 1.
  local hash_script = [[
local d = require("diffuse")
local h = 0xcbf29ce484222325
local function add(t)
  local v = t:reshape(-1):totable()
  for i = 1, #v do
    h = (h ~ string.unpack("<I4", string.pack("<f", v[i]))) * 0x100000001b3
  end
end
add(d.randn({300, 701}, {seed = 3, draw = 7, offset = 2}))
add(d.randn(40000, {seed = 4}))
local s = d.zeros(301, 300):t()
s:normal_({seed = 5})
add(s)
add(d.rand({200, 333}, {seed = 6}))
print(string.format("%016x", h))
]]

  it("results do not depend on the instruction set the fill was compiled for", function()
    local ref = run(hash_script, 1, "generic")
    assert.matches("^%x+\n$", ref)
    for _, isa in ipairs({ "avx2", "avx512f", "" }) do
      for _, threads in ipairs({ 1, 2 }) do
        assert.equal(ref, run(hash_script, threads, isa), "DIFFUSE_RNG_ISA=" .. isa .. ", " .. threads .. " threads")
      end
    end
    -- the variable is read (so the runs above did use the variants asked for)
    assert.matches("DIFFUSE_RNG_ISA must be generic, avx2 or avx512f",
      run("require(\"diffuse\").randn(3)", 1, "sse9"))
  end)
end)

describe("statistics", function()
  local N = 1000000

  -- Normal CDF via erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: far below the KS
  -- critical value of ~2e-3 used here).
  local function erf(x)
    local sgn = x < 0 and -1 or 1
    x = math.abs(x)
    local t = 1 / (1 + 0.3275911 * x)
    local poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sgn * (1 - poly * math.exp(-x * x))
  end
  local function phi(x) return 0.5 * (1 + erf(x / math.sqrt(2))) end

  -- Kolmogorov-Smirnov statistic of sorted values against a CDF.
  local function ks(sorted, cdf, shift)
    shift = shift or 0
    local n, d = #sorted, 0
    for i = 1, n do
      local f = cdf(sorted[i] + shift)
      local hi, lo = i / n - f, f - (i - 1) / n
      if hi > d then d = hi end
      if lo > d then d = lo end
    end
    return d
  end
  -- Asymptotic critical value at alpha = 1e-3: sqrt(-ln(alpha / 2) / 2) / sqrt(n).
  local KS_CRIT = math.sqrt(-math.log(1e-3 / 2) / 2) / math.sqrt(N)

  -- Tolerances: with n = 1e6 independent draws the standard errors are
  --   mean:                 1 / sqrt(n)                    = 1.0e-3
  --   variance:             sqrt(2 / n)                    = 1.4e-3  (normal 4th moment 3)
  --   P(|z| > 3) = 0.0027:  sqrt(p (1 - p) / n)            = 5.2e-5
  --   lag-1 correlation:    1 / sqrt(n)                    = 1.0e-3
  -- Each check allows 6 standard errors, so a correct generator fails one with probability
  -- ~2e-9; a wrong variance (e.g. 0.99), a biased mean of 0.01 or a wrong tail is caught.
  local function moments(v)
    local n, s, sq, tail, lag = #v, 0, 0, 0, 0
    for i = 1, n do
      local x = v[i]
      s = s + x; sq = sq + x * x
      if x > 3 or x < -3 then tail = tail + 1 end
      if i > 1 then lag = lag + x * v[i - 1] end
    end
    local mean = s / n
    return mean, sq / n - mean * mean, tail / n, lag / (n - 1)
  end

  it("randn: mean, variance, 3-sigma tail, lag correlation, KS", function()
    -- 1e6 draws as 1000 rows of 1000: exercises the row and block layout
    local v = diffuse.randn({ 1000, 1000 }, { seed = 2024 }):reshape(-1):totable()
    local mean, var, tail, lag = moments(v)
    local se = 1 / math.sqrt(N)
    assert.is_true(math.abs(mean) < 6 * se, "mean " .. mean)
    assert.is_true(math.abs(var - 1) < 6 * math.sqrt(2 / N), "variance " .. var)
    local p3 = 2 * (1 - phi(3))
    assert.is_true(math.abs(tail - p3) < 6 * math.sqrt(p3 * (1 - p3) / N), "tail " .. tail .. " vs " .. p3)
    assert.is_true(math.abs(lag) < 6 * se, "lag-1 correlation " .. lag)
    table.sort(v)
    local d = ks(v, phi)
    assert.is_true(d < KS_CRIT, ("KS %.3g >= %.3g"):format(d, KS_CRIT))
    -- the test has power: a shift of 0.01 sigma is rejected
    assert.is_true(ks(v, phi, 0.01) > KS_CRIT)
  end)

  it("randn of a 1-d tensor (one element per row) is normal too", function()
    local v = diffuse.randn(N, { seed = 99 }):totable()
    local mean, var, _, lag = moments(v)
    assert.is_true(math.abs(mean) < 6 / math.sqrt(N), "mean " .. mean)
    assert.is_true(math.abs(var - 1) < 6 * math.sqrt(2 / N), "variance " .. var)
    assert.is_true(math.abs(lag) < 6 / math.sqrt(N), "lag-1 correlation " .. lag)
  end)

  it("rand: in [0, 1), on the 2^-24 grid, mean, variance, KS", function()
    local v = diffuse.rand({ 500, 2000 }, { seed = 7 }):reshape(-1):totable()
    local n, s, sq = #v, 0, 0
    for i = 1, n do
      local x = v[i]
      s = s + x; sq = sq + x * x
      if i <= 10000 then
        assert(x >= 0 and x < 1, "out of range: " .. x)
        assert(x * 2 ^ 24 == math.floor(x * 2 ^ 24), "not on the 2^-24 grid: " .. x)
      end
    end
    local mean = s / n
    local var = sq / n - mean * mean
    -- uniform: sd of x is 1/sqrt(12), sd of x^2 around var 1/12 is ~0.0745 per draw
    assert.is_true(math.abs(mean - 0.5) < 6 * math.sqrt(1 / 12 / N), "mean " .. mean)
    assert.is_true(math.abs(var - 1 / 12) < 6 * 0.0745 / math.sqrt(N), "variance " .. var)
    table.sort(v)
    assert.is_true(v[1] >= 0 and v[n] < 1)
    local function ucdf(x) return x < 0 and 0 or (x > 1 and 1 or x) end
    local d = ks(v, ucdf)
    assert.is_true(d < KS_CRIT, ("KS %.3g >= %.3g"):format(d, KS_CRIT))
    assert.is_true(ks(v, ucdf, 0.005) > KS_CRIT)
  end)
end)
