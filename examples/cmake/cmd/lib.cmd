library = CMAKE130
cells = cells
out = lib
