package router

import (
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// The containerd API services the gateway routes: imported so that
	// their descriptors tell the router which calls are unary.
	_ "github.com/containerd/containerd/api/services/containers/v1"
	_ "github.com/containerd/containerd/api/services/content/v1"
	_ "github.com/containerd/containerd/api/services/diff/v1"
	_ "github.com/containerd/containerd/api/services/events/v1"
	_ "github.com/containerd/containerd/api/services/images/v1"
	_ "github.com/containerd/containerd/api/services/leases/v1"
	_ "github.com/containerd/containerd/api/services/namespaces/v1"
	_ "github.com/containerd/containerd/api/services/snapshots/v1"
	_ "github.com/containerd/containerd/api/services/tasks/v1"
	_ "github.com/containerd/containerd/api/services/transfer/v1"
)

// shape says how many messages each side of a call sends.
type shape uint8

const (
	// streams is any call whose caller may send more than one message, or a
	// method the router has no descriptor for: both sides relayed as streams.
	streams shape = iota
	// unary calls carry one message each way.
	unary
	// serverStream calls carry one request and any number of answers.
	serverStream
)

// shapesOf returns the shape of every method of the containerd services with
// ID id ("content") known to the protobuf registry, by full method name
// ("/containerd.services.content.v1.Content/Write").
func shapesOf(id string) map[string]shape {
	shapes := make(map[string]shape)
	prefix := servicePrefix + id + "."
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if !strings.HasPrefix(string(fd.Package())+".", prefix) {
			return true
		}
		services := fd.Services()
		for i := range services.Len() {
			sd := services.Get(i)
			methods := sd.Methods()
			for j := range methods.Len() {
				m := methods.Get(j)
				s := streams
				switch {
				case !m.IsStreamingClient() && !m.IsStreamingServer():
					s = unary
				case !m.IsStreamingClient():
					s = serverStream
				}
				shapes["/"+string(sd.FullName())+"/"+string(m.Name())] = s
			}
		}
		return true
	})
	return shapes
}
