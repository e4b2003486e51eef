-- Writes the seed corpus for `make fuzz` into fuzz/corpus/safetensors (run from the repo root:
-- LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 fuzz/make_corpus.lua).
local diffuse = require("diffuse")
local dir = "fuzz/corpus/safetensors/"

local function raw(name, header, data)
  local f = assert(io.open(dir .. name, "wb"))
  f:write(string.pack("<I8", #header), header, data or "")
  f:close()
end

local t = { w = diffuse.tensor({ { 1, -2, 3 }, { 0.5, 1e-8, 65504 } }), b = diffuse.arange(4) }
assert(diffuse.safetensors.save(dir .. "valid_f32.safetensors", t, { format = "pt", note = "a\"b\\c\n" }))
assert(diffuse.safetensors.save(dir .. "valid_f16.safetensors", t, nil, { dtype = "F16" }))
assert(diffuse.safetensors.save(dir .. "valid_bf16.safetensors", { ["ünï\"cøde"] = diffuse.ones(1, 2, 1, 2) }, nil,
  { dtype = "BF16" }))
assert(diffuse.safetensors.save(dir .. "empty.safetensors", {}, nil))
raw("scalar_f64.safetensors", '{"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}', string.pack("<d", 2.5))
raw("ints.safetensors", '{"a":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},' ..
  '"b":{"dtype":"U8","shape":[3],"data_offsets":[16,19]},"c":{"dtype":"BOOL","shape":[1],"data_offsets":[19,20]},' ..
  '"d":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[20,21]},"e":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[21,22]}}',
  string.pack("<i8i8", -3, 7) .. "\1\2\255\1\56\60")
raw("zero_size.safetensors", '{"z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"__metadata__":{}}')
raw("escapes.safetensors", '{"\\u00e9\\ud83d\\ude00\\n\\/":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},' ..
  '"__metadata__":{"k":"\\"v\\""}, "x":{"dtype":"F16","shape":[1],"data_offsets":[2,4],"extra":[{"a":null}]}}',
  "\0\60\0\188")
raw("five_dims.safetensors", '{"t":{"dtype":"U8","shape":[1,1,1,1,2],"data_offsets":[0,2]}}', "\1\2")
raw("bad_overlap.safetensors", '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},' ..
  '"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}', "\1\2\3")
raw("bad_json.safetensors", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}', "\0\0\0\0")
local f = assert(io.open(dir .. "short.safetensors", "wb")); f:write("\4\0\0"); f:close()
