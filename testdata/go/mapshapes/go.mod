module mapscope.test/mapshapes

go 1.19
