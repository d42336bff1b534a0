module mapscope.test/allocsites

go 1.19
