package holdings

import (
	"context"
	"errors"
	"fmt"
	"testing"

	namespacesv1 "github.com/flotilla/flotilla/proto/namespaces/v1"
)

func TestListIsSortedAndLeavesOutEmptyNamespaces(t *testing.T) {
	s := New(func(context.Context) (map[string][]string, error) {
		return map[string][]string{
			"zeta":  {"snapshots", "containers", "snapshots"},
			"alpha": {"containers"},
			"empty": nil,
		}, nil
	})
	resp, err := s.List(context.Background(), &namespacesv1.ListHoldingsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range resp.GetHoldings() {
		got = append(got, fmt.Sprint(h.GetNamespace(), h.GetKinds()))
	}
	if want := "[alpha[containers] zeta[containers snapshots]]"; fmt.Sprint(got) != want {
		t.Errorf("list = %v, want %s", got, want)
	}
}

func TestListPassesTheListersError(t *testing.T) {
	boom := errors.New("boom")
	_, err := New(func(context.Context) (map[string][]string, error) { return nil, boom }).
		List(context.Background(), &namespacesv1.ListHoldingsRequest{})
	if !errors.Is(err, boom) {
		t.Errorf("list: %v, want the lister's error", err)
	}
}
