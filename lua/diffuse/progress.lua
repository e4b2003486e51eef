-- Progress lines with throughput and ETA for long runs (training, search, many samples), and a
-- clean stop on Ctrl-C.
--
--   local bar = diffuse.progress.new{ total = 5000, label = "train", unit = "img" }
--   for i = 1, 5000 do ...; bar:update(i, { loss = l }) end
--   bar:finish()
--
-- On a terminal the line redraws in place (at most every `every` seconds); otherwise a line is
-- written at most every `log_every` seconds, so CI logs stay short.
local core = require("diffuse.core")
local sys = core._system

local M = {}

local Bar = {}
Bar.__index = Bar

local function clock(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  local h, m = s // 3600, (s % 3600) // 60
  if h > 0 then return ("%d:%02d:%02d"):format(h, m, s % 60) end
  return ("%d:%02d"):format(m, s % 60)
end
M.clock = clock

local function check(o)
  if type(o) ~= "table" then error("bad argument #1 to 'progress.new' (options table expected)", 3) end
  local known = { total = true, label = true, unit = true, out = true, every = true, log_every = true,
    scale = true, now = true, tty = true }
  for k in pairs(o) do
    if not known[k] then
      error(("bad argument #1 to 'progress.new' (unknown option '%s'; valid: every, label, log_every, now, out, scale, total, tty, unit)"):format(
        tostring(k)), 3)
    end
  end
  if math.type(o.total) ~= "integer" or o.total < 1 then
    error("bad argument #1 to 'progress.new' (total must be a positive integer)", 3)
  end
end

-- new{total, label = "", unit = "it", out = io.stderr, every = 0.2, log_every = 10,
--     scale = 1 (units per step, e.g. the batch size), now = diffuse.wtime, tty = auto}
function M.new(o)
  check(o)
  local out = o.out or io.stderr
  local tty = o.tty
  if tty == nil then tty = sys.isatty(out == io.stdout and 1 or 2) end
  local now = o.now or core.wtime
  local t0 = now()
  return setmetatable({
    total = o.total, label = o.label or "", unit = o.unit or "it", out = out, scale = o.scale or 1,
    every = tty and (o.every or 0.2) or (o.log_every or 10), tty = tty, now = now,
    t0 = t0, last = -math.huge, done = 0, start_done = 0,
  }, Bar)
end

-- The line for `done` steps (exposed for tests).
function Bar:line(done, extra)
  local el = self.now() - self.t0
  local frac = done / self.total
  local rate = (done - self.start_done) / math.max(el, 1e-9)
  local eta = rate > 0 and (self.total - done) / rate or math.huge
  local parts = { ("%s %d/%d %5.1f%%"):format(self.label, done, self.total, 100 * frac) }
  if extra then
    local keys = {}
    for k in pairs(extra) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = extra[k]
      parts[#parts + 1] = type(v) == "number" and ("%s %.4g"):format(k, v) or ("%s %s"):format(k, tostring(v))
    end
  end
  parts[#parts + 1] = ("%.4g %s/s"):format(rate * self.scale, self.unit)
  parts[#parts + 1] = ("elapsed %s"):format(clock(el))
  parts[#parts + 1] = done < self.total and ("ETA %s"):format(clock(eta)) or "done"
  return (table.concat(parts, "  "):gsub("^ +", ""))
end

-- Report `done` steps (and optional named values); prints when due.
function Bar:update(done, extra)
  self.done = done
  local t = self.now()
  if t - self.last < self.every and done < self.total then return end
  self.last = t
  self.printed = done
  local line = self:line(done, extra)
  if self.tty then self.out:write("\r", line, "\27[K") else self.out:write(line, "\n") end
  self.out:flush()
end

-- Resume: the rate and ETA count only steps after `done` (e.g. after loading a checkpoint).
function Bar:resume_from(done)
  self.start_done, self.done = done, done
  self.t0 = self.now()
end

function Bar:finish(extra)
  self.last = -math.huge
  -- in a log, the final count was just written by update: do not repeat the line
  if not self.tty and self.printed == self.done and self.done >= self.total then return end
  local line = self:line(self.done, extra)
  if self.tty then self.out:write("\r", line, "\27[K\n") else self.out:write(line, "\n") end
  self.out:flush()
end

-- with_interrupt(f): runs f(stop) where stop() tells whether Ctrl-C was pressed since the
-- start; the normal Ctrl-C behaviour comes back afterwards, even if f raises.  A second
-- Ctrl-C during f stops the process at once.
function M.with_interrupt(f)
  sys.arm_sigint()
  local ok, a, b, c = pcall(f, sys.interrupted)
  sys.disarm_sigint()
  if not ok then error(a, 0) end
  return a, b, c
end

return M
