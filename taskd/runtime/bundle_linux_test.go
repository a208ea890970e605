package runtime

import (
	"os"
	"syscall"
	"testing"
)

func TestBundleOfAUserNamespacedContainerIsOpenToItsRemappedRootGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	for _, tc := range []struct {
		name     string
		spec     string
		wantMode os.FileMode
		wantGID  uint32
	}{
		{"without user namespace the bundle is root's alone",
			`{"process":{"args":["true"]}}`, 0o700, 0},
		{"with a GID mapping of root the bundle is 0710 with the mapped group",
			`{"process":{"args":["true"]},"linux":{"uidMappings":[{"containerID":0,"hostID":1000,"size":65536}],"gidMappings":[{"containerID":0,"hostID":2000,"size":65536}]}}`, 0o710, 2000},
		{"with GID mappings that leave root unmapped nothing changes",
			`{"process":{"args":["true"]},"linux":{"gidMappings":[{"containerID":1,"hostID":2000,"size":10}]}}`, 0o700, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := newBundle(t.TempDir(), "ns", "c1", []byte(tc.spec))
			if err != nil {
				t.Fatal(err)
			}
			defer b.remove()
			fi, err := os.Stat(b.path)
			if err != nil {
				t.Fatal(err)
			}
			gid := fi.Sys().(*syscall.Stat_t).Gid
			if fi.Mode().Perm() != tc.wantMode || gid != tc.wantGID {
				t.Fatalf("bundle mode %o group %d, want %o group %d", fi.Mode().Perm(), gid, tc.wantMode, tc.wantGID)
			}
		})
	}
}
