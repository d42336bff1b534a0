module mapscope.test/nosampling

go 1.19
