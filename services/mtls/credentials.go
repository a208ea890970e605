package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// LocalInfo is the AuthInfo of a call over a unix socket: the peer process
// as the kernel saw it when it connected (SO_PEERCRED).
type LocalInfo struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
}

// AuthType implements credentials.AuthInfo.
func (LocalInfo) AuthType() string { return "local" }

// PeerCred reads the credentials of the process on the other end of a unix
// socket connection.
func PeerCred(conn net.Conn) (LocalInfo, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return LocalInfo{}, fmt.Errorf("connection %T has no socket", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return LocalInfo{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return LocalInfo{}, err
	}
	if credErr != nil {
		return LocalInfo{}, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return LocalInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID:            cred.Uid, GID: cred.Gid, PID: cred.Pid,
	}, nil
}

// isTCP reports whether conn goes over the network (not a unix socket or an
// in-process socket pair).
func isTCP(conn net.Conn) bool {
	a := conn.LocalAddr()
	return a != nil && (a.Network() == "tcp" || a.Network() == "tcp4" || a.Network() == "tcp6")
}

// ErrNoIdentity is why a TCP connection is refused by a peer without a
// certificate: Flotilla never speaks plaintext over TCP.
var ErrNoIdentity = fmt.Errorf("TCP between Flotilla peers needs mutual TLS, and no certificate is configured (tls-ca, tls-cert, tls-key): %w", errdefs.ErrFailedPrecondition)

// Credentials are gRPC transport credentials for both kinds of socket a
// Flotilla peer uses: a unix socket connection passes as it is, with the
// peer's SO_PEERCRED as its AuthInfo; a TCP connection must complete mutual
// TLS with id (as server, the peer's certificate signed by the CA; as
// client, the server's certificate naming the host dialled). Without an
// identity every TCP connection is refused. Handshakes that fail are logged
// on log (server side), with the peer's address.
type Credentials struct {
	id  *Identity
	log *slog.Logger
}

// NewCredentials returns Credentials for id (nil: unix sockets only),
// logging refused peers on log (nil: not logged).
func NewCredentials(id *Identity, log *slog.Logger) *Credentials {
	return &Credentials{id: id, log: log}
}

// ServerHandshake implements credentials.TransportCredentials.
func (c *Credentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if !isTCP(conn) {
		info, err := PeerCred(conn)
		if err != nil {
			return nil, nil, err
		}
		return conn, info, nil
	}
	tconn, info, err := c.serverTLS(context.Background(), conn)
	if err != nil {
		return nil, nil, err
	}
	return tconn, info, nil
}

func (c *Credentials) serverTLS(ctx context.Context, conn net.Conn) (*tls.Conn, credentials.TLSInfo, error) {
	if c.id == nil {
		c.refused(conn, ErrNoIdentity)
		conn.Close()
		return nil, credentials.TLSInfo{}, ErrNoIdentity
	}
	tconn := tls.Server(conn, c.id.Server())
	if err := tconn.HandshakeContext(ctx); err != nil {
		c.refused(conn, err)
		tconn.Close()
		return nil, credentials.TLSInfo{}, fmt.Errorf("mutual TLS with %s: %w", conn.RemoteAddr(), err)
	}
	return tconn, tlsInfo(tconn), nil
}

func (c *Credentials) refused(conn net.Conn, err error) {
	if c.log != nil {
		c.log.Warn("refused a TCP peer: no valid client certificate over TLS", "peer", conn.RemoteAddr().String(), "error", err)
	}
}

func tlsInfo(conn *tls.Conn) credentials.TLSInfo {
	return credentials.TLSInfo{
		State:          conn.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}
}

// ClientHandshake implements credentials.TransportCredentials. authority is
// the host:port (or host) dialled; its host is the name the server's
// certificate must carry.
func (c *Credentials) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if !isTCP(conn) {
		return conn, LocalInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
	}
	tconn, err := c.ClientTLS(ctx, authority, conn)
	if err != nil {
		return nil, nil, err
	}
	return tconn, tlsInfo(tconn), nil
}

// ClientTLS runs the client side of mutual TLS on conn, a TCP connection to
// authority, for callers that speak HTTP/2 themselves (the gateway's relay).
func (c *Credentials) ClientTLS(ctx context.Context, authority string, conn net.Conn) (*tls.Conn, error) {
	if c.id == nil {
		conn.Close()
		return nil, ErrNoIdentity
	}
	host, _, err := net.SplitHostPort(authority)
	if err != nil {
		host = authority
	}
	tconn := tls.Client(conn, c.id.Client(host))
	if err := tconn.HandshakeContext(ctx); err != nil {
		tconn.Close()
		return nil, fmt.Errorf("mutual TLS with %s: %w", authority, errors.Join(err, errdefs.ErrUnavailable))
	}
	return tconn, nil
}

// Info implements credentials.TransportCredentials.
func (c *Credentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

// Clone implements credentials.TransportCredentials.
func (c *Credentials) Clone() credentials.TransportCredentials {
	return &Credentials{id: c.id, log: c.log}
}

// OverrideServerName implements credentials.TransportCredentials (deprecated
// in gRPC; the authority passed to ClientHandshake is used instead).
func (c *Credentials) OverrideServerName(string) error { return nil }

// Listener wraps a front door's listener (a server that speaks HTTP/2
// itself rather than through gRPC's transport): TCP connections are served
// over mutual TLS, handshaken on first use, and refused (logged) without a
// valid client certificate; unix connections pass as they are.
func (c *Credentials) Listener(l net.Listener) net.Listener {
	return &listener{Listener: l, c: c}
}

type listener struct {
	net.Listener
	c *Credentials
}

func (l *listener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil || !isTCP(conn) {
		return conn, err
	}
	if l.c.id == nil {
		l.c.refused(conn, ErrNoIdentity)
		conn.Close()
		// Not an error of the listener: the next peer may be served.
		return &refusedConn{Conn: conn}, nil
	}
	return &serverConn{Conn: tls.Server(conn, l.c.id.Server()), raw: conn, c: l.c}, nil
}

// serverConn is a TLS connection whose handshake runs on its first read or
// write, so a slow peer never holds up Accept; a failed one is logged.
type serverConn struct {
	*tls.Conn
	raw net.Conn
	c   *Credentials
	hs  sync.Once
	err error
}

func (s *serverConn) handshake() error {
	s.hs.Do(func() {
		if s.err = s.Conn.Handshake(); s.err != nil {
			s.c.refused(s.raw, s.err)
			s.Conn.Close()
		}
	})
	return s.err
}

func (s *serverConn) Read(b []byte) (int, error) {
	if err := s.handshake(); err != nil {
		return 0, err
	}
	return s.Conn.Read(b)
}

func (s *serverConn) Write(b []byte) (int, error) {
	if err := s.handshake(); err != nil {
		return 0, err
	}
	return s.Conn.Write(b)
}

// ConnectionState is the TLS state after the handshake (for authorization).
func (s *serverConn) ConnectionState() tls.ConnectionState { return s.Conn.ConnectionState() }

type refusedConn struct{ net.Conn }

func (refusedConn) Read([]byte) (int, error)  { return 0, ErrNoIdentity }
func (refusedConn) Write([]byte) (int, error) { return 0, ErrNoIdentity }
