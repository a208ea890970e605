module github.com/flotilla/flotilla/gateway

go 1.26.8
