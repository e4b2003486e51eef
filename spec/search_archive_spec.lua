-- The search archive: lines written and flushed one by one, read back exactly, a line cut
-- short by a kill skipped (and the next record still readable), tags kept apart.
local diffuse = require("diffuse")
local archive = require("diffuse.search.archive")
local json = require("diffuse.json")

local function plan_n(i) return { times = { 1, 0.5 / i, 0.001 }, steps = { { order = 1 }, { order = 2, scale = { linear = 0.1 * i } } } } end

describe("search.archive", function()
  local path
  before_each(function() path = os.tmpname() os.remove(path) end)
  after_each(function() os.remove(path) end)

  it("appends one flushed JSON line per record and reads them back", function()
    local a = archive.open(path)
    for i = 1, 5 do
      a:add({ tag = "t", key = "k" .. i, plan = plan_n(i), score = 1 / i, nfe = 2, seconds = 0.5, generation = i })
      -- flushed: the file already holds i lines while still open
      local f = assert(io.open(path))
      local n = 0
      for _ in f:lines() do n = n + 1 end
      f:close()
      assert.are.equal(i, n)
    end
    a:close()
    local b = archive.open(path)
    assert.are.equal(5, b.count)
    local r = b:get("t", "k3")
    assert.are.equal(1 / 3, r.score)
    assert.are.equal(0.1 * 3, r.plan.steps[2].scale.linear)
    assert.are.equal(3, r.generation)
    assert.are.equal(5, #b:records("t"))
    assert.are.equal(0, #b:records("other"))
    assert.is_nil(b:get("other", "k3"))
    b:close()
  end)

  it("stores failures without infinity and reads them as math.huge", function()
    local a = archive.open(path)
    a:add({ tag = "t", key = "bad", plan = plan_n(1), score = 0 / 0 })
    a:add({ tag = "t", key = "inf", plan = plan_n(2), score = math.huge })
    a:close()
    local f = assert(io.open(path))
    local first = json.decode(f:read("l"))
    f:close()
    assert.is_true(first.failed)
    assert.is_nil(first.score)
    local b = archive.open(path)
    assert.are.equal(math.huge, b:get("t", "bad").score)
    assert.are.equal(math.huge, b:get("t", "inf").score)
    b:close()
  end)

  it("skips a line cut short by a kill and keeps the next record readable", function()
    local a = archive.open(path)
    a:add({ tag = "t", key = "a", plan = plan_n(1), score = 1 })
    a:close()
    local f = assert(io.open(path, "ab"))
    f:write('{"key":"half","plan":{"times":[1,0.') -- the line in flight when the run died
    f:close()
    local b = archive.open(path)
    assert.are.equal(1, b.count)
    assert.are.equal(1, b.skipped)
    b:add({ tag = "t", key = "b", plan = plan_n(2), score = 2 })
    b:close()
    local c = archive.open(path)
    assert.are.equal(2, c.count)
    assert.are.equal(2, c:get("t", "b").score)
    c:close()
  end)

  it("works in memory without a path", function()
    local a = archive.open()
    a:add({ key = "x", plan = plan_n(1), score = 3 })
    assert.are.equal(3, a:get(nil, "x").score)
    assert.has_error(function() a:add({ plan = plan_n(1) }) end, "search.archive.add: a record needs 'key' (string) and 'plan' (table)")
  end)
end)
