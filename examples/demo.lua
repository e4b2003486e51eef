-- Demo: the first 64 Fashion-MNIST test images as an 8x8 PNG grid.
-- Run from the repository root with `make demo`.
local diffuse = require("diffuse")

local d, err = diffuse.data.fashion_mnist { split = "test", limit = 64 }
if not d then
  io.stderr:write("demo: ", err, "\n")
  os.exit(1)
end

local out_dir = "build/demo"
local path = out_dir .. "/fashion_mnist_grid.png"
assert(os.execute("mkdir -p '" .. out_dir .. "'"), "cannot create " .. out_dir)

local ok, werr = diffuse.image.write_grid(path, d.images, { nrow = 8 })
if not ok then
  io.stderr:write("demo: ", werr, "\n")
  os.exit(1)
end

local first_row = {}
for i = 1, 8 do first_row[i] = d.classes[d.labels[i] + 1] end
print(("wrote %s: the first %d Fashion-MNIST test images in an 8x8 grid; first row: %s")
  :format(path, d.images:size(1), table.concat(first_row, ", ")))
