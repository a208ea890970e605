package router

import "testing"

func TestShapesOf(t *testing.T) {
	for _, tc := range []struct {
		id, method string
		want       shape
		known      bool
	}{
		{"namespaces", "/containerd.services.namespaces.v1.Namespaces/Get", unary, true},
		{"content", "/containerd.services.content.v1.Content/Read", serverStream, true},
		{"content", "/containerd.services.content.v1.Content/Write", streams, true},
		{"events", "/containerd.services.events.v1.Events/Subscribe", serverStream, true},
		{"events", "/containerd.services.events.v1.Events/Publish", unary, true},
		{"snapshots", "/containerd.services.snapshots.v1.Snapshots/Prepare", unary, true},
		{"content", "/containerd.services.namespaces.v1.Namespaces/Get", 0, false},
		{"content", "/containerd.services.content.v1.Content/NoSuchMethod", 0, false},
	} {
		got, ok := shapesOf(tc.id)[tc.method]
		if ok != tc.known || got != tc.want {
			t.Errorf("shapesOf(%q)[%s] = %v, %v; want %v, %v", tc.id, tc.method, got, ok, tc.want, tc.known)
		}
	}
}
