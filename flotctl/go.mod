module github.com/flotilla/flotilla/flotctl

go 1.26.8
