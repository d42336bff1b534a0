module mapscope.test/mapvars

go 1.19
