-- Parallel evaluation of search candidates: forked worker processes on this machine, or MPI
-- ranks on many machines.  Items and results are plain data (numbers, strings, booleans and
-- tables of them) and travel as JSON text; the function runs in the workers.
--
--   local pool = parallel.pool{workers = 2}        -- forked per map() from this process
--   local scores = pool:map(fn, items, {progress = bar | function(done, total, result, i)})
--
--   local pool = parallel.pool{mpi = true}         -- under `mpirun -n N lua5.4 script.lua`
--   if pool:is_root() then results = pool:map(fn, items) else pool:serve(fn) end
--   pool:close()
--
-- Results are those of `fn(items[i])` evaluated one after the other in this process with the
-- pool's kernel thread count (`threads`, default 1): the random numbers are counter-based, so
-- where an item runs does not change it; only the kernels' thread count can (OpenBLAS splits
-- sums differently), hence one count for every evaluation of a pool, in-process ones too.
local core = require("diffuse.core")
local json = require("diffuse.json")
local util = require("diffuse.util")

local P = core._proc
local M = {}
local F = "parallel"

-- ---- plain data over JSON, exactly ----
-- json.lua writes an integral float as an integer and cannot write inf or nan; such floats
-- travel as {[FLOAT] = text} so that a worker's result is bit for bit the in-process one.
local FLOAT = "__diffuse_float"

local function pack(v, path, seen)
  local tv = type(v)
  if tv == "number" then
    if math.type(v) == "float" and (v ~= v or v == math.floor(v)) then
      local s = v ~= v and "nan" or v == math.huge and "inf" or v == -math.huge and "-inf"
        or (v == 0 and 1 / v < 0) and "-0" or ("%.17g"):format(v)
      return { [FLOAT] = s }
    end
    return v
  elseif tv == "string" or tv == "boolean" then
    return v
  elseif tv == "table" then
    if seen[v] then error(("%s contains itself"):format(path), 0) end
    seen[v] = true
    local out = {}
    for k, x in pairs(v) do
      if type(k) ~= "string" and math.type(k) ~= "integer" then
        error(("%s has a %s key"):format(path, type(k)), 0)
      end
      out[k] = pack(x, ("%s[%s]"):format(path, type(k) == "string" and ("%q"):format(k) or k), seen)
    end
    seen[v] = nil
    return out
  elseif tv == "nil" then
    return nil
  elseif util.is_tensor(v) then
    error(("%s is a tensor (send v:totable(), or a seed to rebuild it)"):format(path), 0)
  end
  error(("%s is a %s"):format(path, tv), 0)
end

local function unpack_value(v)
  if type(v) ~= "table" then return v end
  local s = v[FLOAT]
  if s ~= nil and next(v, next(v)) == nil then
    if s == "nan" then return 0 / 0 elseif s == "inf" then return math.huge
    elseif s == "-inf" then return -math.huge elseif s == "-0" then return -0.0 end
    return tonumber(s) + 0.0
  end
  for k, x in pairs(v) do v[k] = unpack_value(x) end
  return v
end

-- text for a value; raises "<what> is not plain data: <why>"
local function encode(v, what)
  local ok, s = pcall(function() return json.encode(pack(v, what, {})) end)
  if not ok then error(("%s is not plain data: %s"):format(what, tostring(s):gsub("^json: ", "")), 0) end
  return s
end

local function decode(s) return unpack_value(json.decode(s)) end

M._encode, M._decode = encode, decode -- for the specs

-- ---- options ----

local function check_fn(fname, fn)
  if type(fn) ~= "function" and not (getmetatable(fn) and getmetatable(fn).__call) then
    util.fail(fname, ("fn must be a function, got %s"):format(type(fn)), 3)
  end
end

local function check_items(fname, items)
  if type(items) ~= "table" then util.fail(fname, ("items must be a list, got %s"):format(type(items)), 3) end
  local n, count = #items, 0
  for k in pairs(items) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      util.fail(fname, ("items must be a list 1..n without holes (key %s)"):format(tostring(k)), 3)
    end
    count = count + 1
  end
  if count ~= n then util.fail(fname, ("items must be a list 1..n without holes (%d of %d set)"):format(count, n), 3) end
  return n
end

-- progress option -> function(done, total, result, i), finish()
local function progress_hook(fname, p, total)
  if p == nil or p == false then return nil end
  if p == true then
    local bar = require("diffuse.progress").new{ total = math.max(total, 1), label = "map", unit = "item" }
    -- off a terminal the update at done == total already wrote the last line
    return function(done) bar:update(done) end, function() if bar.tty then bar:finish() end end
  end
  if type(p) == "function" then return p end
  if type(p) == "table" and type(p.update) == "function" then
    return function(done) p:update(done) end
  end
  util.fail(fname, ("progress must be true, a progress bar or a function(done, total, result, i), got %s"):format(type(p)), 3)
end

local Pool = {}
Pool.__index = Pool

-- pool{workers = N, threads = 1, mpi = false}
function M.pool(opts)
  local fname = F .. ".pool"
  opts = util.check_options(fname, opts or {}, { workers = true, threads = true, mpi = true }, 2)
  local threads = opts.threads or 1
  if math.type(threads) ~= "integer" or threads < 1 then
    util.fail(fname, ("threads must be a positive integer, got %s"):format(tostring(opts.threads)), 2)
  end
  if opts.mpi ~= nil and type(opts.mpi) ~= "boolean" then
    util.fail(fname, ("mpi must be a boolean, got %s"):format(type(opts.mpi)), 2)
  end
  if opts.mpi then
    if opts.workers ~= nil then util.fail(fname, "workers is set by mpirun -n under mpi = true", 2) end
    local rank, size = P.mpi_init()
    if not rank then util.fail(fname, size, 2) end
    return setmetatable({ kind = "mpi", rank = rank, size = size, workers = size - 1, threads = threads }, Pool)
  end
  local workers = opts.workers
  if workers == nil then workers = P.cpus() end
  if math.type(workers) ~= "integer" or workers < 0 or workers > 256 then
    util.fail(fname, ("workers must be an integer between 0 and 256, got %s"):format(tostring(opts.workers)), 2)
  end
  return setmetatable({ kind = workers <= 1 and "serial" or "fork", rank = 0, size = 1, workers = workers,
    threads = threads }, Pool)
end

function Pool:is_root() return self.rank == 0 end

-- Number of online processors (the default for workers).
M.cpus = P.cpus

local function with_threads(n, f)
  local before = core.get_threads()
  core.set_threads(n)
  local ok, a = pcall(f)
  core.set_threads(before)
  if not ok then error(a, 0) end
  return a
end

local function item_failed(i, where, msg)
  return ("parallel.map: item %d failed%s: %s"):format(i, where, tostring(msg))
end

-- evaluate one encoded item: ok, reply text (result or error message)
local function evaluate(fn, text)
  local ok, res = pcall(function() return fn(decode(text)) end)
  if not ok then return false, tostring(res) end
  ok, res = pcall(encode, res, "the result")
  return ok, res
end

local function serial_map(self, fn, payloads, hook)
  local n = #payloads
  return with_threads(self.threads, function()
    local results = {}
    for i = 1, n do
      local ok, text = evaluate(fn, payloads[i])
      if not ok then error(item_failed(i, "", text), 0) end
      results[i] = decode(text)
      if hook then hook(i, n, results[i], i) end
    end
    return results
  end)
end

-- ---- forked workers ----

local INTERRUPTED = setmetatable({}, { __tostring = function() return "interrupted" end })

-- The worker: items arrive as "<index> <json>", replies go back as "ok|err <index> <text>";
-- end of file means stop.  Never returns into the caller's code.
local function worker_main(fn, fd, threads)
  local ok = pcall(function()
    P.child_setup(threads)
    while true do
      local msg = P.recv(fd)
      if not msg then break end
      local i, text = msg:match("^(%d+) (.*)$")
      local good, reply = evaluate(fn, text)
      if not P.send(fd, ("%s %s %s"):format(good and "ok" or "err", i, reply)) then break end
    end
  end)
  P.exit(ok and 0 or 1)
end

local function describe_death(w)
  local kind, code, name = P.wait(w.pid)
  w.reaped = true
  if kind == "signaled" then
    return ("parallel.map: worker %d (pid %d) was killed by signal %d (%s) while evaluating item %s")
      :format(w.id, w.pid, code, name, tostring(w.item))
  end
  return ("parallel.map: worker %d (pid %d) exited with status %s while evaluating item %s")
    :format(w.id, w.pid, tostring(code), tostring(w.item))
end

local function fork_map(self, fn, payloads, hook)
  local n = #payloads
  local results = {}
  local ws = {}
  local nw = math.min(self.workers, n)
  local done = 0
  P.sigint_capture()
  local ok, err = pcall(function()
    for id = 1, nw do
      local mine, theirs = P.socketpair()
      local pid = P.fork()
      if pid == 0 then
        P.close(mine)
        for _, w in ipairs(ws) do P.close(w.fd) end
        worker_main(fn, theirs, self.threads)
      end
      P.close(theirs)
      ws[id] = { id = id, pid = pid, fd = mine }
    end
    local next_item = 1
    local function assign(w)
      if next_item > n then
        P.close(w.fd) -- end of file: the worker exits
        w.fd, w.item = nil, nil
        return
      end
      w.item = next_item
      next_item = next_item + 1
      if not P.send(w.fd, ("%d %s"):format(w.item, payloads[w.item])) then error(describe_death(w), 0) end
    end
    for _, w in ipairs(ws) do assign(w) end
    while done < n do
      if P.sigint_caught() then error(INTERRUPTED, 0) end
      local busy, fds = {}, {}
      for _, w in ipairs(ws) do
        if w.fd then busy[#busy + 1], fds[#fds + 1] = w, w.fd end
      end
      local ready = P.poll(fds, 250) -- nil when a signal arrived: the flag is checked above
      for _, k in ipairs(ready or {}) do
        local w = busy[k]
        local msg = P.recv(w.fd)
        if not msg then error(describe_death(w), 0) end
        local status, i, text = msg:match("^(%a+) (%d+) (.*)$")
        i = tonumber(i)
        if status == "err" then
          error(item_failed(i, (" in worker %d (pid %d)"):format(w.id, w.pid), text), 0)
        end
        results[i] = decode(text)
        done = done + 1
        if hook then hook(done, n, results[i], i) end
        assign(w)
      end
    end
  end)
  -- Stop and reap every worker: on an error or Ctrl-C they are killed, otherwise they have
  -- already been told to exit.
  for _, w in ipairs(ws) do
    if not ok and not w.reaped then P.kill(w.pid, "KILL") end
    if w.fd then P.close(w.fd) end
    if not w.reaped then P.wait(w.pid) end
  end
  local caught = P.sigint_release()
  if caught or err == INTERRUPTED then
    P.sigint_forward() -- to whoever handled Ctrl-C before (by default: the process stops)
    error(("parallel.map: interrupted (Ctrl-C) after %d of %d items; the workers were stopped")
      :format(done, n), 0)
  end
  if not ok then error(err, 0) end
  return results
end

-- ---- MPI ranks ----

local KIND = { stop = 0, item = 1, ok = 2, err = 3 }

local function mpi_map(self, fn, payloads, hook)
  local n = #payloads
  local results = {}
  local next_item, done, failure = 1, 0, nil
  local outstanding = 0
  local function assign(rank)
    if next_item > n or failure then return end
    P.mpi_send(rank, KIND.item, next_item, payloads[next_item])
    next_item, outstanding = next_item + 1, outstanding + 1
  end
  for r = 1, math.min(self.size - 1, n) do assign(r) end
  -- after a failure, the results still on their way are received (and dropped) so the
  -- workers are idle and the pool usable when the error reaches the caller
  while outstanding > 0 do
    local kind, i, text, from = P.mpi_recv(-1)
    outstanding = outstanding - 1
    if kind == KIND.err then
      failure = failure or item_failed(i, (" on rank %d"):format(from), text)
    elseif kind == KIND.ok and not failure then
      results[i] = decode(text)
      done = done + 1
      if hook then hook(done, n, results[i], i) end
    end
    assign(from)
  end
  if failure then error(failure, 0) end
  return results
end

-- pool:map(fn, items[, {progress = ...}]) -> results, results[i] = fn(items[i])
function Pool:map(fn, items, opts)
  local fname = F .. ".map"
  check_fn(fname, fn)
  local n = check_items(fname, items)
  opts = util.check_options(fname, opts, { progress = true }, 2)
  if self.closed then util.fail(fname, "the pool is closed", 2) end
  if self.rank ~= 0 then util.fail(fname, ("rank %d serves; only rank 0 maps (use pool:serve(fn))"):format(self.rank), 2) end
  local hook, finish = progress_hook(fname, opts.progress, n)
  local payloads = {}
  for i = 1, n do
    local ok, s = pcall(encode, items[i], ("item %d"):format(i))
    if not ok then util.fail(fname, s, 2) end
    payloads[i] = s
  end
  local results
  if n == 0 then results = {}
  elseif self.kind == "fork" then results = fork_map(self, fn, payloads, hook)
  elseif self.kind == "mpi" and self.size > 1 then results = mpi_map(self, fn, payloads, hook)
  else results = serial_map(self, fn, payloads, hook) end
  if finish then finish() end
  return results
end

-- pool:serve(fn) on ranks other than 0: evaluate what rank 0 sends until it closes the pool;
-- returns the number of items evaluated.
function Pool:serve(fn)
  local fname = F .. ".serve"
  check_fn(fname, fn)
  if self.kind ~= "mpi" then util.fail(fname, "serve is for MPI pools (parallel.pool{mpi = true})", 2) end
  if self.rank == 0 then util.fail(fname, "rank 0 is the root: it maps, the other ranks serve", 2) end
  if self.closed then util.fail(fname, "the pool is closed", 2) end
  return with_threads(self.threads, function()
    local count = 0
    while true do
      local kind, i, text = P.mpi_recv(0)
      if kind == KIND.stop then return count end
      local ok, reply = evaluate(fn, text)
      P.mpi_send(0, ok and KIND.ok or KIND.err, i, reply)
      count = count + 1
    end
  end)
end

-- pool:close(): the root tells the serving ranks to return; every rank finalises MPI.
-- Idempotent; a no-op for local pools.
function Pool:close()
  if self.closed then return end
  self.closed = true
  if self.kind ~= "mpi" then return end
  if self.rank == 0 then
    for r = 1, self.size - 1 do P.mpi_send(r, KIND.stop, 0) end
  end
  P.mpi_finalize()
end

Pool.__close = Pool.close

function Pool:__tostring()
  if self.kind == "mpi" then return ("parallel.pool(mpi rank %d of %d)"):format(self.rank, self.size) end
  return ("parallel.pool(%s, %d workers, %d thread%s each)"):format(self.kind, self.workers, self.threads,
    self.threads == 1 and "" or "s")
end

return M
