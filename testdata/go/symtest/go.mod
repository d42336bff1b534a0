module mapscope.test/symtest

go 1.19
