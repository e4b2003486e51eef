-- Shipped plans: save/read round trip (exact), load by name through DIFFUSE_PLANS and the
-- source tree, list, clear errors; every shipped plan file validates and says how it was found.
local diffuse = require("diffuse")
local plans = require("diffuse.plans")

local sched = diffuse.schedule.vp_cosine()

describe("plans", function()
  it("saves and reads a plan with its info exactly", function()
    local p = diffuse.plan.build("unipc", { schedule = sched, steps = 5, variant = "bh2" })
    p.steps[3].scale = { linear = 0.123456789 }
    local path = os.tmpname() .. ".json"
    assert(plans.save(path, p, { how = "by hand", fd = 1.5 }))
    local q, info = assert(plans.read(path))
    assert.are.equal(diffuse.plan.tojson(p), diffuse.plan.tojson(q))
    assert.are.equal("by hand", info.how)
    assert.are.equal(1.5, info.fd)
    os.remove(path)
  end)

  it("loads by name from DIFFUSE_PLANS-like directories and lists them", function()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p '" .. dir .. "'")
    local p = diffuse.plan.build("ddim", { schedule = sched, steps = 3 })
    assert(plans.save(dir .. "/my-test-plan.json", p, { note = "x" }))
    local dirs = plans.dirs
    plans.dirs = function() return { dir } end
    local q, info = plans.load("my-test-plan")
    local names = plans.list()
    local missing, err = plans.load("no-such-plan")
    plans.dirs = dirs
    os.remove(dir .. "/my-test-plan.json")
    os.remove(dir)
    assert.are.equal(diffuse.plan.tojson(p), diffuse.plan.tojson(q))
    assert.are.equal(dir .. "/my-test-plan.json", info.path)
    assert.are.same({ "my-test-plan" }, names)
    assert.is_nil(missing)
    assert.truthy(err:match("no plan 'no%-such%-plan'"))
  end)

  it("refuses invalid files with the plan's own message", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write('{"plan": {"times": [1, 0.5], "steps": [{"order": 3}]}}')
    f:close()
    local p, err = plans.read(path)
    os.remove(path)
    assert.is_nil(p)
    assert.truthy(err:match("order 3 needs"))
    assert.has_error(function() plans.load(3) end, "plans.load: name must be a non-empty string")
  end)

  it("every shipped plan validates, loads by name, and records how it was found", function()
    local names = plans.list()
    for _, name in ipairs(names) do
      local p, info = assert(plans.load(name))
      assert(diffuse.plan.validate(p))
      if name:match("^fashion%-s3%-nfe") then
        local nfe = tonumber(name:match("nfe(%d+)"))
        assert.are.equal(nfe, #p.times - 1 - (p.analytic and 1 or 0))
        assert.is_string(info.method)
        assert.is_string(info.command)
      end
    end
  end)
end)
