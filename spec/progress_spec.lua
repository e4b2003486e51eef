local H = require("helper")
local diffuse = H.diffuse
local progress = diffuse.progress

-- A fake clock and output so the spec does not depend on time or a terminal.
local function fake(total, o)
  local t = 0
  local lines = {}
  local out = { write = function(self, ...) for _, s in ipairs({ ... }) do lines[#lines + 1] = s end return self end,
    flush = function() end }
  o = o or {}
  o.total, o.out, o.now, o.tty = total, out, function() return t end, o.tty or false
  local bar = progress.new(o)
  return bar, function(dt) t = t + dt end, lines
end

describe("progress", function()
  it("shows counts, percentage, rate, elapsed time and ETA", function()
    local bar, tick = fake(100, { label = "train", unit = "img", scale = 64 })
    tick(10)
    local line = bar:line(25, { loss = 0.03125 })
    assert.matches("^train 25/100  25.0%%  loss 0.03125  160 img/s  elapsed 0:10  ETA 0:30$", line)
    assert.matches("done$", bar:line(100))
  end)

  it("writes at most one line per interval off a terminal, and always the last", function()
    local bar, tick, lines = fake(1000, { log_every = 5 })
    for i = 1, 1000 do
      tick(0.01)
      bar:update(i)
    end
    -- 10 s of work, one line every 5 s: the first at the first update, then two more
    local text = table.concat(lines)
    local _, n = text:gsub("\n", "")
    assert.equal(3, n)
    assert.matches("1000/1000[^\n]*\n$", text)
  end)

  it("redraws in place on a terminal", function()
    local bar, tick, lines = fake(10, { tty = true })
    tick(1)
    bar:update(5)
    assert.equal("\r", lines[1])
    assert.equal("\27[K", lines[3])
  end)

  it("ETA after a resume counts only the new steps", function()
    local bar, tick = fake(100)
    bar:resume_from(50)
    tick(10)
    assert.matches("ETA 0:40", bar:line(60))
  end)

  it("formats clocks", function()
    assert.equal("0:05", progress.clock(5))
    assert.equal("1:01:01", progress.clock(3661))
    assert.equal("?", progress.clock(math.huge))
  end)

  it("checks its options", function()
    assert.matches("total must be a positive integer", H.error_of(progress.new, { total = 0 }))
    assert.matches("unknown option 'lable'", H.error_of(progress.new, { total = 1, lable = "x" }))
  end)

  it("with_interrupt turns Ctrl-C into a flag and restores it afterwards", function()
    local sys = require("diffuse.core")._system
    local seen = progress.with_interrupt(function(stop)
      assert.is_false(stop())
      sys.raise_sigint()
      return stop()
    end)
    assert.is_true(seen)
    assert.is_false(sys.interrupted())
    -- errors inside still restore the handler
    assert.matches("boom", H.error_of(progress.with_interrupt, function() error("boom") end))
  end)
end)
