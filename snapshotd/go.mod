module github.com/flotilla/flotilla/snapshotd

go 1.26.8
