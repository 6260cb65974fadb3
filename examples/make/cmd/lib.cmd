library = MAKE130
cells = cells
out = lib
