module mapscope.demo/service

go 1.21
