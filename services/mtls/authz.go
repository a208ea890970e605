package mtls

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Caller is who is on the other end of a call, as authorization sees it.
type Caller struct {
	// Local is true for a unix socket peer; UID, GID and PID are then
	// the kernel's account of it.
	Local    bool
	UID, GID uint32
	PID      int32
	// Role and Name come from a TCP peer's verified client certificate,
	// and Node, when the certificate names one, the node it is for.
	Role, Name, Node string
}

func (c Caller) String() string {
	if c.Local {
		return fmt.Sprintf("local process %d (uid %d, gid %d)", c.PID, c.UID, c.GID)
	}
	if c.Name == "" && c.Role == "" {
		return "an unauthenticated peer"
	}
	if c.Node != "" {
		return fmt.Sprintf("%q (role %q, node %q)", c.Name, c.Role, c.Node)
	}
	return fmt.Sprintf("%q (role %q)", c.Name, c.Role)
}

// MayActFor says whether the caller may name node as the node its call
// came through (the flotilla-node metadata a gateway sets): a local
// process may (the socket's mode admits only trusted ones), a TCP peer
// only with a service certificate for that node, so that no other node's
// services and no client can have work done on a node in its name.
func (c Caller) MayActFor(node string) error {
	if c.Local || (c.Role == RoleService && c.Node == node) {
		return nil
	}
	return fmt.Errorf("%s may not act for node %q: only a service certificate issued for that node (flotctl certs issue --node) may: %w",
		c, node, errdefs.ErrPermissionDenied)
}

// CallerFromContext returns the caller of the gRPC call ctx belongs to,
// as the server's Credentials authenticated it.
func CallerFromContext(ctx context.Context) (Caller, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Caller{}, false
	}
	switch info := p.AuthInfo.(type) {
	case LocalInfo:
		return Caller{Local: true, UID: info.UID, GID: info.GID, PID: info.PID}, true
	case credentials.TLSInfo:
		return callerOfTLS(info.State), true
	}
	return Caller{}, false
}

// CallerOfConn returns the caller on a connection a front door accepted
// from a Credentials listener (see Credentials.Listener).
func CallerOfConn(conn net.Conn) (Caller, error) {
	if s, ok := conn.(*serverConn); ok {
		if err := s.handshake(); err != nil {
			return Caller{}, err
		}
		return callerOfTLS(s.Conn.ConnectionState()), nil
	}
	info, err := PeerCred(conn)
	if err != nil {
		return Caller{}, err
	}
	return Caller{Local: true, UID: info.UID, GID: info.GID, PID: info.PID}, nil
}

func callerOfTLS(st tls.ConnectionState) Caller {
	if len(st.PeerCertificates) == 0 {
		return Caller{}
	}
	leaf := st.PeerCertificates[0]
	return Caller{Role: Role(leaf), Name: leaf.Subject.CommonName, Node: Node(leaf)}
}

// AdminPolicy says who may call what can run programs or read the host: on
// TCP, a certificate with the admin role; locally, root, the daemon's own
// user, or a process whose group is the socket's (the 0660 socket lets no
// one else connect).
type AdminPolicy struct {
	UID, SocketGID uint32
}

// Allow returns nil when c may call admin methods, else a PermissionDenied
// error naming c.
func (p AdminPolicy) Allow(c Caller) error {
	if c.Local {
		if c.UID == 0 || c.UID == p.UID || c.GID == p.SocketGID {
			return nil
		}
		return fmt.Errorf("%s is neither root nor in the socket's group (gid %d): %w", c, p.SocketGID, errdefs.ErrPermissionDenied)
	}
	if c.Role == RoleAdmin {
		return nil
	}
	return fmt.Errorf("%s: only a certificate with the %q role may call this: %w", c, RoleAdmin, errdefs.ErrPermissionDenied)
}
