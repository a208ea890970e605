package integration

import (
	"context"
	"strings"
	"testing"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestNamespaceRemovalWaitsForSnapshotsAndContainers checks that a namespace
// still holding snapshots in snapshotd or containers in taskd cannot be
// removed, as containerd refuses it, and can be once they are gone.
func TestNamespaceRemovalWaitsForSnapshotsAndContainers(t *testing.T) {
	s := startStack(t)

	rmRefused := func(t *testing.T, ns, what string) {
		t.Helper()
		out, err := s.Ctr("default", "namespaces", "rm", ns)
		if err == nil {
			t.Fatalf("ctr namespaces rm %s succeeded while it holds %s: %s", ns, what, out)
		}
		for _, want := range []string{"failed precondition", "must be empty", what} {
			if !strings.Contains(out, want) {
				t.Errorf("ctr namespaces rm %s: want %q in:\n%s", ns, want, out)
			}
		}
		if !strings.Contains(s.MustCtr("default", "namespaces", "ls", "-q"), ns) {
			t.Errorf("namespace %s gone after a refused rm", ns)
		}
	}
	rmSucceeds := func(t *testing.T, ns string) {
		t.Helper()
		s.MustCtr("default", "namespaces", "rm", ns)
		if strings.Contains(s.MustCtr("default", "namespaces", "ls", "-q"), ns) {
			t.Errorf("namespace %s still listed after rm", ns)
		}
	}

	t.Run("a namespace holding a snapshot is not removed until the snapshot is", func(t *testing.T) {
		s.MustCtr("default", "namespaces", "create", "busy")
		s.MustCtr("busy", "snapshots", "--snapshotter", "native", "prepare", "k1")
		rmRefused(t, "busy", "snapshots")
		s.MustCtr("busy", "snapshots", "--snapshotter", "native", "rm", "k1")
		rmSucceeds(t, "busy")
	})

	t.Run("a namespace holding a container is not removed until the container is", func(t *testing.T) {
		s.MustCtr("default", "namespaces", "create", "crowded")
		containers := containersapi.NewContainersClient(s.Conn())
		ctx := inNamespace(context.Background(), "crowded")
		_, err := containers.Create(ctx, &containersapi.CreateContainerRequest{Container: &containersapi.Container{
			ID:      "c1",
			Spec:    &anypb.Any{TypeUrl: specTypeURL, Value: []byte(`{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/"},"root":{"path":"rootfs"}}`)},
			Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
		}})
		if err != nil {
			t.Fatalf("create container: %v", err)
		}
		rmRefused(t, "crowded", "containers")
		if _, err := containers.Delete(ctx, &containersapi.DeleteContainerRequest{ID: "c1"}); err != nil {
			t.Fatalf("delete container: %v", err)
		}
		rmSucceeds(t, "crowded")
	})

	t.Run("a namespace is not removed while taskd cannot be asked", func(t *testing.T) {
		skipInOneProcess(t, "taskd cannot be down while contentd answers")
		s.MustCtr("default", "namespaces", "create", "unknown")
		s.Kill9("taskd")
		out, err := s.Ctr("default", "namespaces", "rm", "unknown")
		if err == nil {
			t.Fatalf("ctr namespaces rm succeeded with taskd down: %s", out)
		}
		for _, want := range []string{"unavailable", "taskd"} {
			if !strings.Contains(out, want) {
				t.Errorf("ctr namespaces rm with taskd down: want %q in:\n%s", want, out)
			}
		}
		s.Up()
		rmSucceeds(t, "unknown")
	})
}
