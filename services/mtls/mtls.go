// Package mtls is how Flotilla's services and clients trust each other over
// TCP: mutual TLS against one cluster CA, every peer presenting a
// certificate that names its role. Unix sockets carry no TLS: there the
// kernel says who the peer is (SO_PEERCRED) and the socket's mode (0660)
// who may connect.
package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
)

// Roles a certificate carries, as its subject's organizational unit.
const (
	// RoleAdmin may call what can run programs or read the host
	// (snapshotd's admin API) as well as everything a client may.
	RoleAdmin = "admin"
	// RoleService is a Flotilla service: it serves and calls other services.
	RoleService = "service"
	// RoleClient calls containerd's API (ctr, flotctl, nerdctl through a gateway).
	RoleClient = "client"
)

// Roles lists every role, for validating what a certificate asks for.
var Roles = []string{RoleAdmin, RoleService, RoleClient}

// Files names the PEM files of a peer's identity: the cluster CA that signs
// every peer, the peer's own certificate and its private key. All three or
// none are given.
type Files struct {
	CA   string `toml:"tls_ca"`
	Cert string `toml:"tls_cert"`
	Key  string `toml:"tls_key"`
}

// Empty reports whether no file is named.
func (f Files) Empty() bool { return f.CA == "" && f.Cert == "" && f.Key == "" }

// Identity is a loaded set of Files: whom to trust and who we are.
type Identity struct {
	pool *x509.CertPool
	cert tls.Certificate
	// Role is the role of our own certificate.
	Role string
	// Name is our certificate's common name.
	Name string
}

// Load reads f. With no file named it returns nil: the peer has no TLS
// identity and may use unix sockets only. Some but not all files named is
// an InvalidArgument error.
func Load(f Files) (*Identity, error) {
	if f.Empty() {
		return nil, nil
	}
	if f.CA == "" || f.Cert == "" || f.Key == "" {
		return nil, fmt.Errorf("mutual TLS needs a CA, a certificate and a key (tls-ca, tls-cert, tls-key); got ca=%q cert=%q key=%q: %w",
			f.CA, f.Cert, f.Key, errdefs.ErrInvalidArgument)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("tls ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("tls ca %s: no PEM certificate in it: %w", f.CA, errdefs.ErrInvalidArgument)
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("tls certificate %s with key %s: %w", f.Cert, f.Key, errors.Join(err, errdefs.ErrInvalidArgument))
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tls certificate %s: %w", f.Cert, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("tls certificate %s is not signed by the CA %s: %w", f.Cert, f.CA, errors.Join(err, errdefs.ErrInvalidArgument))
	}
	return &Identity{pool: pool, cert: cert, Role: Role(leaf), Name: leaf.Subject.CommonName}, nil
}

// Server is the TLS configuration of a TCP listener: TLS 1.3, HTTP/2 only
// (gRPC), and a client certificate signed by the CA required of every peer.
func (id *Identity) Server() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    id.pool,
		NextProtos:   []string{"h2"},
	}
}

// Client is the TLS configuration of a connection to serverName (the host
// part of the address dialled, which the server's certificate must name).
func (id *Identity) Client(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		RootCAs:      id.pool,
		ServerName:   serverName,
		NextProtos:   []string{"h2"},
	}
}

// nodeURIPrefix starts the URI SAN naming the node a certificate's holder
// runs on: urn:flotilla:node:<name>.
const nodeURIPrefix = "urn:flotilla:node:"

// NodeURI is the URI SAN a certificate for a service of node names.
func NodeURI(node string) string { return nodeURIPrefix + node }

// Node is the node a certificate is for (its urn:flotilla:node: URI SAN),
// or "" when it names none.
func Node(cert *x509.Certificate) string {
	for _, u := range cert.URIs {
		if s := u.String(); strings.HasPrefix(s, nodeURIPrefix) {
			return strings.TrimPrefix(s, nodeURIPrefix)
		}
	}
	return ""
}

// Role is the role a certificate carries: the first organizational unit of
// its subject that names one of Roles, or "" when none does.
func Role(cert *x509.Certificate) string {
	for _, ou := range cert.Subject.OrganizationalUnit {
		if slices.Contains(Roles, ou) {
			return ou
		}
	}
	return ""
}
