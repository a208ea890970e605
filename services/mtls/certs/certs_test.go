package certs

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/services/mtls"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: not PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestNodeCertificates: a service certificate issued for a node names it,
// and only such a certificate may act for that node.
func TestNodeCertificates(t *testing.T) {
	dir := t.TempDir()
	if err := NewCA(dir, "test CA", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := Issue(dir, Request{Name: "gw-b", Role: mtls.RoleService, Hosts: []string{"10.0.0.2"}, Node: "b", Validity: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := Issue(dir, Request{Name: "contentd", Role: mtls.RoleService, Hosts: []string{"10.0.0.1"}, Validity: time.Hour}); err != nil {
		t.Fatal(err)
	}
	gw, plain := readCert(t, CertFile(dir, "gw-b")), readCert(t, CertFile(dir, "contentd"))
	if got := mtls.Node(gw); got != "b" {
		t.Errorf("node of a certificate issued for b: %q", got)
	}
	if got := mtls.Node(plain); got != "" {
		t.Errorf("node of a certificate issued for none: %q", got)
	}

	for _, req := range []Request{
		{Name: "user", Role: mtls.RoleClient, Node: "b"},
		{Name: "svc", Role: mtls.RoleService, Hosts: []string{"x"}, Node: "b/c"},
	} {
		if err := Issue(dir, Request{Name: req.Name, Role: req.Role, Hosts: req.Hosts, Node: req.Node, Validity: time.Hour}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("issue %+v: %v, want InvalidArgument", req, err)
		}
	}

	for _, tc := range []struct {
		caller mtls.Caller
		ok     bool
	}{
		{mtls.Caller{Local: true}, true},
		{mtls.Caller{Role: mtls.RoleService, Name: "gw-b", Node: mtls.Node(gw)}, true},
		{mtls.Caller{Role: mtls.RoleService, Name: "gw-c", Node: "c"}, false},
		{mtls.Caller{Role: mtls.RoleService, Name: "contentd"}, false},
		{mtls.Caller{Role: mtls.RoleClient, Name: "user", Node: "b"}, false},
		{mtls.Caller{Role: mtls.RoleAdmin, Name: "operator"}, false},
	} {
		err := tc.caller.MayActFor("b")
		if tc.ok != (err == nil) || (err != nil && !errdefs.IsPermissionDenied(err)) {
			t.Errorf("%s acting for node b: %v", tc.caller, err)
		}
	}
}
