library = DEMO130
cells = cells
out = lib
