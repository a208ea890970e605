module github.com/flotilla/flotilla/contentd

go 1.26.8
