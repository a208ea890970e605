package relay

import (
	"errors"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// statusOf is the gRPC code and message a routing error answers a call with.
func statusOf(err error) (codes.Code, string) {
	st := status.Convert(errgrpc.ToGRPC(err))
	return st.Code(), st.Message()
}

// grpcStatus reads the grpc-status of a header block.
func grpcStatus(fields []hpack.HeaderField) (codes.Code, bool) {
	for _, f := range fields {
		if f.Name == "grpc-status" {
			n, err := strconv.ParseUint(f.Value, 10, 32)
			if err != nil {
				return codes.Unknown, true
			}
			return codes.Code(n), true
		}
	}
	return 0, false
}

// resetCode is the gRPC code of a call reset with an HTTP/2 error code, as
// gRPC's clients read it.
func resetCode(c http2.ErrCode) codes.Code {
	switch c {
	case http2.ErrCodeNo, http2.ErrCodeCancel:
		return codes.Canceled
	case http2.ErrCodeRefusedStream:
		return codes.Unavailable
	case http2.ErrCodeEnhanceYourCalm:
		return codes.ResourceExhausted
	case http2.ErrCodeInadequateSecurity:
		return codes.PermissionDenied
	}
	return codes.Internal
}

// hopByHop are connection-specific headers, which HTTP/2 does not carry
// from one connection to another.
var hopByHop = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true,
	"transfer-encoding": true, "upgrade": true,
}

// forwardable returns fields without connection-specific headers.
func forwardable(fields []hpack.HeaderField) []hpack.HeaderField {
	for _, f := range fields {
		if hopByHop[f.Name] {
			out := make([]hpack.HeaderField, 0, len(fields))
			for _, f := range fields {
				if !hopByHop[f.Name] {
					out = append(out, f)
				}
			}
			return out
		}
	}
	return fields
}

// withHeader returns fields with extra's fields in place of any of the
// same names.
func withHeader(fields, extra []hpack.HeaderField) []hpack.HeaderField {
	if len(extra) == 0 {
		return fields
	}
	out := make([]hpack.HeaderField, 0, len(fields)+len(extra))
	for _, f := range fields {
		replaced := false
		for _, e := range extra {
			if f.Name == e.Name {
				replaced = true
				break
			}
		}
		if !replaced {
			out = append(out, f)
		}
	}
	return append(out, extra...)
}

// encodeGRPCMessage percent-encodes msg as the grpc-message header wants:
// bytes outside printable ASCII, and '%'.
func encodeGRPCMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteString("%")
		b.WriteString(strings.ToUpper(strconv.FormatUint(uint64(c)>>4, 16)))
		b.WriteString(strings.ToUpper(strconv.FormatUint(uint64(c)&15, 16)))
	}
	return b.String()
}

// isClosedConn reports errors that only say the connection is gone.
func isClosedConn(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || strings.Contains(err.Error(), "connection reset")
}
