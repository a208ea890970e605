package transfer

import (
	"context"
	"fmt"
	"sync"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/contentd/registry"
	"github.com/flotilla/flotilla/contentd/streaming"
)

// askClient returns credentials asked of the client on its auth stream:
// an AuthRequest naming the host and reference, answered by one
// AuthResponse. One question at a time goes on the stream.
func askClient(st streaming.Stream, ref string) registry.Credentials {
	var mu sync.Mutex
	return func(ctx context.Context, host string) (registry.Credential, error) {
		mu.Lock()
		defer mu.Unlock()
		req, err := streaming.ToAny(&transfertypes.AuthRequest{Host: host, Reference: ref})
		if err != nil {
			return registry.Credential{}, err
		}
		if err := st.Send(req); err != nil {
			return registry.Credential{}, fmt.Errorf("ask client for credentials: %w", err)
		}
		a, err := st.Recv()
		if err != nil {
			return registry.Credential{}, fmt.Errorf("client's credentials: %w", err)
		}
		var resp transfertypes.AuthResponse
		if err := a.UnmarshalTo(&resp); err != nil {
			return registry.Credential{}, fmt.Errorf("client answered %s to a credentials request: %w", a.GetTypeUrl(), errdefs.ErrInvalidArgument)
		}
		switch resp.GetAuthType() {
		case transfertypes.AuthType_CREDENTIALS:
			return registry.Credential{Username: resp.GetUsername(), Secret: resp.GetSecret()}, nil
		case transfertypes.AuthType_REFRESH:
			return registry.Credential{RefreshToken: resp.GetSecret()}, nil
		case transfertypes.AuthType_HEADER:
			return registry.Credential{Header: resp.GetSecret()}, nil
		}
		return registry.Credential{}, nil
	}
}
