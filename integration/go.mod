module github.com/flotilla/flotilla/integration

go 1.26.8
