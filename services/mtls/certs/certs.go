// Package certs makes the certificates of a lab cluster: one CA, and one
// certificate per service, admin or client, signed by it, its role in the
// subject's organizational unit (services/mtls reads it from there).
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/services/mtls"
)

// Files in a certificate directory.
const (
	CAFile    = "ca.pem"
	CAKeyFile = "ca-key.pem"
)

// CertFile and KeyFile are where Issue writes name's certificate and key.
func CertFile(dir, name string) string { return filepath.Join(dir, name+".pem") }
func KeyFile(dir, name string) string  { return filepath.Join(dir, name+"-key.pem") }

// NewCA makes a CA called name, valid for validity, in dir (ca.pem, and
// ca-key.pem readable by its owner only). An existing CA is not replaced:
// that would orphan every certificate it signed.
func NewCA(dir, name string, validity time.Duration) error {
	if _, err := os.Stat(filepath.Join(dir, CAFile)); err == nil {
		return fmt.Errorf("%s already holds a CA (%s): %w", dir, CAFile, errdefs.ErrAlreadyExists)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Flotilla"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return write(filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile), der, key)
}

// Request is what Issue certifies.
type Request struct {
	Name  string   // common name, also the files' name
	Role  string   // one of mtls.Roles
	Hosts []string // IP addresses and DNS names a service is reached at
	// Node, for a service certificate, is the node its holder runs on:
	// a gateway with it may name that node in the calls it relays.
	Node string
	// Validity is how long the certificate is valid.
	Validity time.Duration
}

// Issue signs a certificate for req with the CA in dir and writes it with
// its key to CertFile and KeyFile. A service certificate serves and dials
// (server and client auth) and must name its hosts; admin and client
// certificates only dial.
func Issue(dir string, req Request) error {
	if req.Name == "" || req.Name == "ca" || filepath.Base(req.Name) != req.Name {
		return fmt.Errorf("certificate name %q: want a plain file name: %w", req.Name, errdefs.ErrInvalidArgument)
	}
	if !slices.Contains(mtls.Roles, req.Role) {
		return fmt.Errorf("role %q: want one of %v: %w", req.Role, mtls.Roles, errdefs.ErrInvalidArgument)
	}
	if req.Node != "" && req.Role != mtls.RoleService {
		return fmt.Errorf("only a service certificate is for a node (--node): %w", errdefs.ErrInvalidArgument)
	}
	if req.Node != "" {
		if _, err := url.Parse(mtls.NodeURI(req.Node)); err != nil || strings.ContainsAny(req.Node, "/?#% ") {
			return fmt.Errorf("node name %q: %w", req.Node, errdefs.ErrInvalidArgument)
		}
	}
	if req.Role == mtls.RoleService && len(req.Hosts) == 0 {
		return fmt.Errorf("a service certificate names the hosts it is reached at (--host): %w", errdefs.ErrInvalidArgument)
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{"Flotilla"}, OrganizationalUnit: []string{req.Role}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(req.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if req.Role == mtls.RoleService {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	for _, h := range req.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if req.Node != "" {
		u, _ := url.Parse(mtls.NodeURI(req.Node))
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return write(CertFile(dir, req.Name), KeyFile(dir, req.Name), der, key)
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("no CA in %s (flotctl certs ca): %w", dir, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("CA in %s: not PEM: %w", dir, errdefs.ErrInvalidArgument)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// write writes a certificate (0644) and its key (0600), the key first, so
// a certificate is never there without its key.
func write(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
