module github.com/flotilla/flotilla/taskd

go 1.26.8

require (
	github.com/flotilla/flotilla/proto v0.0.0
	github.com/flotilla/flotilla/services v0.0.0
)

replace (
	github.com/flotilla/flotilla/proto => ../proto
	github.com/flotilla/flotilla/services => ../services
)
