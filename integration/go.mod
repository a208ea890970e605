module github.com/flotilla/flotilla/integration

go 1.26.8

require (
	github.com/containerd/containerd/api v1.12.0
	github.com/containerd/errdefs v1.0.0
	github.com/flotilla/flotilla/flotctl v0.0.0
	github.com/klauspost/compress v1.20.4
	github.com/opencontainers/go-digest v1.0.0
	github.com/opencontainers/image-spec v1.1.1
	golang.org/x/sys v0.48.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
	oras.land/oras-go/v2 v2.6.0
)

require (
	github.com/BurntSushi/toml v1.6.0 // indirect
	github.com/containerd/log v0.1.0 // indirect
	github.com/containerd/ttrpc v1.2.9 // indirect
	github.com/flotilla/flotilla/proto v0.0.0 // indirect
	github.com/flotilla/flotilla/services v0.0.0 // indirect
	github.com/sirupsen/logrus v1.10.2 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sync v0.23.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)

replace (
	github.com/flotilla/flotilla/flotctl => ../flotctl
	github.com/flotilla/flotilla/proto => ../proto
	github.com/flotilla/flotilla/services => ../services
)
