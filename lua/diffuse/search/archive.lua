-- The search archive: one JSON line per evaluated candidate, appended and flushed at once, so a
-- killed run loses at most the line being written.  Reopening the same file reads every
-- complete line back; a search that replays its seeded decisions finds its earlier
-- evaluations here instead of repeating them (that is how a rerun resumes).
--
--   a = archive.open(path)      -- or archive.open() for an archive in memory
--   a:get(tag, key)             -- the record of a candidate, or nil
--   a:add(record)               -- record = {tag, key, plan, score, nfe, seconds, generation, ...}
--   a:records(tag)              -- the records of one search, in the order they were added
--   a:close()
--
-- A record's `score` is a finite number, or absent with `failed = true` (JSON has no infinity):
-- it is read back as math.huge.  `tag` names the search (NFE, fitness, seed), so searches of
-- several budgets may share one file.
local json = require("diffuse.json")
local util = require("diffuse.util")

local M = {}
local F = "search.archive"

local Archive = {}
Archive.__index = Archive

local function index_record(self, r)
  local tag = r.tag or ""
  local byk = self.by_tag[tag]
  if not byk then
    byk = { keys = {}, list = {} }
    self.by_tag[tag] = byk
  end
  if byk.keys[r.key] == nil then
    byk.keys[r.key] = r
    byk.list[#byk.list + 1] = r
  end
end

-- archive.open([path]) -> archive.  Lines that do not parse (a line cut short by a kill) are
-- skipped and counted in a.skipped.
function M.open(path)
  if path ~= nil and type(path) ~= "string" then util.fail(F .. ".open", "path must be a string or nil", 2) end
  local self = setmetatable({ path = path, by_tag = {}, skipped = 0, count = 0 }, Archive)
  if not path then return self end
  local f = io.open(path, "rb")
  local needs_newline = false
  if f then
    local text = f:read("a")
    f:close()
    for line in text:gmatch("[^\n]+") do
      local ok, r = pcall(json.decode, line)
      if ok and type(r) == "table" and r.key and r.plan then
        if r.failed then r.score = math.huge end
        index_record(self, r)
        self.count = self.count + 1
      else
        self.skipped = self.skipped + 1
      end
    end
    -- a last line cut short: start on a fresh line so the next record stays readable
    needs_newline = #text > 0 and text:sub(-1) ~= "\n"
  end
  local out, err = io.open(path, "ab")
  if not out then util.fail(F .. ".open", ("cannot open %s for appending: %s"):format(path, tostring(err)), 2) end
  if needs_newline then out:write("\n") end
  self.file = out
  return self
end

function Archive:get(tag, key)
  local byk = self.by_tag[tag or ""]
  return byk and byk.keys[key]
end

function Archive:records(tag)
  local byk = self.by_tag[tag or ""]
  return byk and byk.list or {}
end

-- Adds a record (and writes its line).  The stored copy is the record itself.
function Archive:add(r)
  if type(r) ~= "table" or type(r.key) ~= "string" or type(r.plan) ~= "table" then
    util.fail(F .. ".add", "a record needs 'key' (string) and 'plan' (table)", 2)
  end
  local line = {}
  for k, v in pairs(r) do line[k] = v end
  if type(r.score) ~= "number" or r.score ~= r.score or r.score == math.huge or r.score == -math.huge then
    line.score = nil
    line.failed = true
    r.score = math.huge
    r.failed = true
  end
  if self.file then
    self.file:write(json.encode(line), "\n")
    self.file:flush()
  end
  index_record(self, r)
  self.count = self.count + 1
  return r
end

function Archive:close()
  if self.file then
    self.file:close()
    self.file = nil
  end
end

return M
