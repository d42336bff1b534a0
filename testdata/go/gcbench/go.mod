module mapscope.test/gcbench

go 1.21
