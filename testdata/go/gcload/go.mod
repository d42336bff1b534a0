module mapscope.test/gcload

go 1.19
