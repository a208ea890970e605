package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/mtls"
	"github.com/flotilla/flotilla/services/mtls/certs"
	"github.com/flotilla/flotilla/services/namespace"
)

// lockedBuffer is a log destination tests can read while the server writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// identity issues name with role from the CA in dir and loads it.
func identity(t *testing.T, dir, name, role string) *mtls.Identity {
	t.Helper()
	if err := certs.Issue(dir, certs.Request{Name: name, Role: role, Hosts: []string{"127.0.0.1"}, Validity: time.Hour}); err != nil {
		t.Fatal(err)
	}
	id, err := mtls.Load(mtls.Files{CA: filepath.Join(dir, certs.CAFile), Cert: certs.CertFile(dir, name), Key: certs.KeyFile(dir, name)})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestTCPWithoutCertificateIsNotServed(t *testing.T) {
	srv := New("testd", config.Common{Address: "tcp://" + freePort(t), ShutdownTimeout: config.Duration(time.Second)}, slog.New(slog.DiscardHandler))
	err := srv.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "mutual TLS") {
		t.Fatalf("Run on TCP without a certificate = %v, want a refusal naming mutual TLS", err)
	}
}

func TestMutualTLS(t *testing.T) {
	dir := shortDir(t)
	if err := certs.NewCA(dir, "test CA", time.Hour); err != nil {
		t.Fatal(err)
	}
	otherCA := shortDir(t)
	if err := certs.NewCA(otherCA, "other CA", time.Hour); err != nil {
		t.Fatal(err)
	}
	serverID := identity(t, dir, "testd", mtls.RoleService)
	addr := freePort(t)
	var logs lockedBuffer
	srv := New("testd", config.Common{Address: "tcp://" + addr, ShutdownTimeout: config.Duration(time.Second)},
		slog.New(slog.NewTextHandler(&logs, nil)), WithIdentity(serverID))
	namespacesapi.RegisterNamespacesServer(srv.GRPC(), &echoNamespaces{release: make(chan struct{})})
	const adminMethod = "/containerd.services.namespaces.v1.Namespaces/Delete"
	srv.AdminOnly(adminMethod)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	call := func(t *testing.T, creds credentials.TransportCredentials, opts ...grpc.CallOption) (*namespacesapi.GetNamespaceResponse, error) {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, "ns"), 5*time.Second)
		defer ccancel()
		return namespacesapi.NewNamespacesClient(conn).Get(cctx, &namespacesapi.GetNamespaceRequest{Name: "x"}, opts...)
	}
	refused := func(t *testing.T, creds credentials.TransportCredentials) {
		t.Helper()
		before := strings.Count(logs.String(), "refused a TCP peer")
		if _, err := call(t, creds); err == nil {
			t.Fatal("the call was answered")
		}
		// The server logs once its side of the handshake has ended, which
		// may be just after the client gave up.
		deadline := time.Now().Add(5 * time.Second)
		for strings.Count(logs.String(), "refused a TCP peer") <= before {
			if time.Now().After(deadline) {
				t.Fatalf("the refusal was not logged:\n%s", logs.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	t.Run("a service certificate signed by the CA is served", func(t *testing.T) {
		resp, err := call(t, mtls.NewCredentials(identity(t, dir, "peer", mtls.RoleService), nil), grpc.WaitForReady(true))
		if err != nil || resp.GetNamespace().GetName() != "ns" {
			t.Fatalf("Get = %v, %v", resp, err)
		}
	})
	t.Run("plaintext is refused and logged", func(t *testing.T) {
		refused(t, insecure.NewCredentials())
	})
	t.Run("TLS without a client certificate is refused and logged", func(t *testing.T) {
		refused(t, credentials.NewTLS(&tls.Config{ServerName: "127.0.0.1", RootCAs: poolOf(t, dir), NextProtos: []string{"h2"}}))
	})
	t.Run("a certificate of another CA is refused and logged", func(t *testing.T) {
		if err := certs.Issue(otherCA, certs.Request{Name: "intruder", Role: mtls.RoleAdmin, Validity: time.Hour}); err != nil {
			t.Fatal(err)
		}
		cert, err := tls.LoadX509KeyPair(certs.CertFile(otherCA, "intruder"), certs.KeyFile(otherCA, "intruder"))
		if err != nil {
			t.Fatal(err)
		}
		refused(t, credentials.NewTLS(&tls.Config{ServerName: "127.0.0.1", RootCAs: poolOf(t, dir), Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}))
	})
	t.Run("an admin method refuses a client certificate", func(t *testing.T) {
		err := callDelete(t, addr, mtls.NewCredentials(identity(t, dir, "someone", mtls.RoleClient), nil))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Delete with a client certificate = %v, want PermissionDenied", err)
		}
	})
	t.Run("an admin method takes an admin certificate", func(t *testing.T) {
		// Past authorization, the test service does not implement Delete.
		err := callDelete(t, addr, mtls.NewCredentials(identity(t, dir, "root", mtls.RoleAdmin), nil))
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("Delete with an admin certificate = %v, want it to reach the service (Unimplemented)", err)
		}
	})
}

func TestAdminMethodOnUnixSocket(t *testing.T) {
	sock := filepath.Join(shortDir(t), "testd.sock")
	srv, _, _, _ := startServerWith(t, config.Common{Address: sock, ShutdownTimeout: config.Duration(time.Second)}, func(s *Server) {
		s.AdminOnly("/containerd.services.namespaces.v1.Namespaces/")
	})
	// The test runs as the socket's owner: allowed, so the call reaches the
	// service, which does not implement Delete.
	_, err := namespacesapi.NewNamespacesClient(client(t, sock)).Delete(
		metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, "ns"), &namespacesapi.DeleteNamespaceRequest{Name: "x"})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("Delete over the socket by its owner = %v, want Unimplemented", err)
	}
	policy := srv.Admin()
	if err := policy.Allow(mtls.Caller{Local: true, UID: policy.UID + 4242, GID: policy.SocketGID + 4242, PID: 1}); err == nil {
		t.Fatal("a local process of another user and group is allowed")
	}
}

func callDelete(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, "ns"), 5*time.Second)
	defer cancel()
	_, err = namespacesapi.NewNamespacesClient(conn).Delete(ctx, &namespacesapi.DeleteNamespaceRequest{Name: "x"})
	return err
}

func poolOf(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(dir, certs.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}
