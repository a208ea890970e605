module github.com/flotilla/flotilla/taskd

go 1.26.8
