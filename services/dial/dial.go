// Package dial opens client connections from one Flotilla service to
// another, over a unix socket or TCP, so components can run on different
// hosts. Calls carry the namespace and lease of their context, and errors
// come back as errdefs kinds.
package dial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"
)

// Target turns an address as Flotilla's flags take it ("/run/x.sock",
// "unix:///run/x.sock", "tcp://host:port", "host:port") into a gRPC target.
func Target(addr string) (string, error) {
	network, address, err := server.SplitAddress(addr)
	if err != nil {
		return "", err
	}
	if network == "unix" {
		return "unix://" + address, nil
	}
	return "passthrough:///" + address, nil
}

// Options are the dial options every connection between services uses:
// plaintext (the services trust their network, as containerd trusts its
// socket), and a reconnect backoff capped at one second so that a restarted
// service is found again promptly.
func Options() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}),
		grpc.WithInitialWindowSize(server.StreamWindow),
		grpc.WithInitialConnWindowSize(server.ConnWindow),
		grpc.WithReadBufferSize(server.IOBuffer),
		grpc.WithWriteBufferSize(server.IOBuffer),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(server.Codec{}),
			grpc.MaxCallRecvMsgSize(server.MaxMsgSize), grpc.MaxCallSendMsgSize(server.MaxMsgSize)),
	}
}

// Dial returns a lazily connecting client for the service at addr.
func Dial(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	target, err := Target(addr)
	if err != nil {
		return nil, err
	}
	all := append(Options(),
		grpc.WithChainUnaryInterceptor(unaryClient),
		grpc.WithChainStreamInterceptor(streamClient),
	)
	conn, err := grpc.NewClient(target, append(all, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return conn, nil
}

func unaryClient(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return errgrpc.ToNative(invoker(namespace.ToOutgoing(ctx), method, req, reply, cc, opts...))
}

func streamClient(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(namespace.ToOutgoing(ctx), desc, cc, method, opts...)
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	return &nativeErrStream{ClientStream: cs}, nil
}

// nativeErrStream converts errors received on a stream back to errdefs kinds.
type nativeErrStream struct{ grpc.ClientStream }

// RecvMsg keeps io.EOF as it is: it is how a stream says it has ended.
func (s *nativeErrStream) RecvMsg(m any) error { return nativeUnlessEOF(s.ClientStream.RecvMsg(m)) }

func nativeUnlessEOF(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return errgrpc.ToNative(err)
}

// SendMsg returns io.EOF when the server has ended the stream; RecvMsg then tells why.
func (s *nativeErrStream) SendMsg(m any) error { return nativeUnlessEOF(s.ClientStream.SendMsg(m)) }
