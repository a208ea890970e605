package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	ctdfilters "github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/services/namespace"
)

// filterObjects are events-like objects the filters are matched against.
var filterObjects = []map[string]string{
	{"topic": "/tasks/exit", "namespace": "default"},
	{"topic": "/tasks/create", "namespace": "default"},
	{"topic": "/images/create", "namespace": "k8s.io", "labels.a.b": "c"},
	{"topic": `/tasks\exit`, "namespace": "default", "labels.owner": "dev"},
	{"namespace": "default"},
}

func fieldsOf(obj map[string]string) func([]string) (string, bool) {
	return func(path []string) (string, bool) {
		v, ok := obj[strings.Join(path, ".")]
		return v, ok
	}
}

// TestFiltersParseAsContainerd parses each filter with Flotilla's
// services/filters and containerd's pkg/filters: what containerd accepts,
// Flotilla accepts and matches against the same objects the same way; what
// containerd refuses, Flotilla refuses too, but for its documented
// extensions (unquoted values starting with '/' after == and !=, spaces
// before a comma, and backslashes containerd does not know kept for the
// regexp in /re/ and |re|). An invalid regexp, which containerd takes and
// never matches, Flotilla refuses.
func TestFiltersParseAsContainerd(t *testing.T) {
	for _, tc := range []struct {
		filter    string
		extension bool // containerd refuses it, Flotilla takes it
		// badRegexp: containerd takes it and matches nothing (it compiles
		// the regexp on each match and logs the error); Flotilla refuses it
		// with InvalidArgument when it parses the filter.
		badRegexp bool
	}{
		{filter: `topic~=|^/tasks/exit|`},
		{filter: `topic~=|^/tasks/|`},
		{filter: `topic~=|^/tasks/(exit|create)$|`},
		{filter: `topic~=|^/images/\|exit$|`},
		{filter: `topic~=|\x2Ftasks|`},
		{filter: `topic~=|\u002Fimages|`},
		{filter: `topic~=|\\\\|`},
		{filter: `topic~=|\\e|`, badRegexp: true},
		{filter: `topic~=/^\/tasks\//`},
		{filter: `topic~="^/tasks/"`},
		{filter: `topic~="\\\\"`},
		{filter: `topic~=^/tasks/`},
		{filter: `topic~=exit$`},
		{filter: `topic=="/tasks/exit"`},
		{filter: `namespace==default,topic~=|^/tasks/|`},
		{filter: `namespace==default , topic~= |create$|`, extension: true},
		{filter: `labels."a.b"==c`},
		{filter: `labels.owner`},
		{filter: `labels.owner!=dev`},
		{filter: `topic`},
		{filter: `topic==|/tasks/exit|`},
		{filter: `topic!=|/tasks/exit|`},
		{filter: `topic~=|^/tasks/`},
		{filter: `topic~=|^/tasks/exit|x`},
		{filter: `topic~=/tasks/exit`},
		{filter: `topic~=|[|`, badRegexp: true},
		{filter: `topic~=|\q|`, extension: true},
		{filter: `topic==`},
		{filter: `,topic`},
		{filter: `topic==/tasks/exit`, extension: true},
		{filter: `topic!=/tasks/exit`, extension: true},
		{filter: `topic~=|^/tasks/\w+$|`, extension: true},
		{filter: `topic~=/^\/tasks\/\w+$/`, extension: true},
	} {
		t.Run(tc.filter, func(t *testing.T) {
			want, werr := ctdfilters.Parse(tc.filter)
			got, gerr := filters.Parse(tc.filter)
			switch {
			case werr != nil && gerr != nil:
				return
			case werr != nil && tc.extension:
				if gerr != nil {
					t.Fatalf("Flotilla refuses its extension: %v", gerr)
				}
				return
			case werr != nil:
				t.Fatalf("containerd refuses it (%v), Flotilla takes it", werr)
			case tc.badRegexp:
				for _, obj := range filterObjects {
					if want.Match(ctdfilters.AdapterFunc(fieldsOf(obj))) {
						t.Fatalf("containerd matches %v", obj)
					}
				}
				if !errdefs.IsInvalidArgument(gerr) {
					t.Fatalf("Flotilla: %v, want InvalidArgument", gerr)
				}
				return
			case gerr != nil:
				t.Fatalf("containerd takes it, Flotilla refuses it: %v", gerr)
			case tc.extension:
				t.Fatalf("containerd takes what the test calls Flotilla's extension")
			}
			for _, obj := range filterObjects {
				w := want.Match(ctdfilters.AdapterFunc(fieldsOf(obj)))
				g := got.Match(filters.AdapterFunc(fieldsOf(obj)))
				if w != g {
					t.Errorf("on %v: containerd matches %v, Flotilla %v", obj, w, g)
				}
			}
		})
	}
}

// TestSubscribeWithRegexpFilter subscribes, on Flotilla and containerd
// 1.6, with a |regexp| filter as containerd's clients write them
// (TestRegressionIssue4769: topic~=|^/tasks/exit|) and checks only the
// topics it names arrive: a namespace created and then updated gives the
// update alone.
func TestSubscribeWithRegexpFilter(t *testing.T) {
	for _, kind := range clientBackends {
		t.Run(kind.name, func(t *testing.T) {
			b := kind.start(t)
			conn, err := grpc.NewClient("unix://"+b.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ns := fmt.Sprintf("regexp-%d", time.Now().UnixNano())
			ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, ns), time.Minute)
			defer cancel()
			events, err := eventsapi.NewEventsClient(conn).Subscribe(ctx, &eventsapi.SubscribeRequest{
				Filters: []string{`topic~=|^/namespaces/up|`},
			})
			if err != nil {
				t.Fatal(err)
			}
			namespaces := namespacesapi.NewNamespacesClient(conn)
			// Until the subscription is live, updates may be missed: update
			// the labels until one arrives, then create the namespace and
			// update it once more.
			received := make(chan *eventsapi.Envelope)
			go func() {
				defer close(received)
				for {
					env, err := events.Recv()
					if err != nil {
						return
					}
					received <- env
				}
			}()
			update := func(value string) {
				t.Helper()
				_, err := namespaces.Update(ctx, &namespacesapi.UpdateNamespaceRequest{
					Namespace:  &namespacesapi.Namespace{Name: ns, Labels: map[string]string{"step": value}},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels.step"}},
				})
				if err != nil {
					t.Fatalf("update %s: %v", ns, err)
				}
			}
			for live, n := false, 0; !live; n++ {
				update(fmt.Sprint(n))
				select {
				case env, ok := <-received:
					if !ok {
						t.Fatal("subscription ended")
					}
					if env.Topic != "/namespaces/update" {
						t.Fatalf("got %s, want only /namespaces/update", env.Topic)
					}
					live = true
				case <-time.After(200 * time.Millisecond):
				}
			}
			other := ns + "-other"
			if _, err := namespaces.Create(ctx, &namespacesapi.CreateNamespaceRequest{Namespace: &namespacesapi.Namespace{Name: other}}); err != nil {
				t.Fatalf("create %s: %v", other, err)
			}
			update("last")
			for {
				select {
				case env, ok := <-received:
					if !ok {
						t.Fatal("subscription ended")
					}
					if env.Topic != "/namespaces/update" {
						t.Fatalf("got %s, want only /namespaces/update", env.Topic)
					}
					if strings.Contains(string(env.GetEvent().GetValue()), "last") {
						return
					}
				case <-ctx.Done():
					t.Fatal("no /namespaces/update for the last update")
				}
			}
		})
	}
}
