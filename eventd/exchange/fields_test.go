package exchange

import (
	"testing"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"

	"github.com/flotilla/flotilla/services/filters"
)

func envelope(t *testing.T, ns, topic string, event any) *types.Envelope {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		t.Fatal(err)
	}
	return &types.Envelope{Namespace: ns, Topic: topic, Event: a}
}

func TestEventTypeURLsAreContainerdsBareNames(t *testing.T) {
	a, err := typeurl.MarshalAnyToProto(&apievents.NamespaceCreate{Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if a.TypeUrl != "containerd.events.NamespaceCreate" {
		t.Fatalf("type URL %q, want containerd.events.NamespaceCreate as ctr decodes it", a.TypeUrl)
	}
}

func TestFiltersOverEnvelopes(t *testing.T) {
	exit := envelope(t, "default", "/tasks/exit", &apievents.TaskExit{ContainerID: "web", ExitStatus: 3})
	create := envelope(t, "k8s.io", "/images/create", &apievents.ImageCreate{Name: "docker.io/library/busybox:latest", Labels: map[string]string{"tier": "a"}})
	opaque := &types.Envelope{Namespace: "default", Topic: "/custom/thing", Event: nil}

	for _, tc := range []struct {
		name    string
		filters []string
		want    []bool // exit, create, opaque
	}{
		{"no filter matches everything", nil, []bool{true, true, true}},
		{"topic equality", []string{`topic=="/tasks/exit"`}, []bool{true, false, false}},
		{"namespace equality", []string{`namespace==k8s.io`}, []bool{false, true, false}},
		{"topic regexp", []string{`topic~="/images/"`}, []bool{false, true, false}},
		{"comma means and", []string{`namespace==default,topic=="/tasks/exit"`}, []bool{true, false, false}},
		{"several filters mean or", []string{`topic=="/tasks/exit"`, `namespace==k8s.io`}, []bool{true, true, false}},
		{"event field of a decoded event", []string{`event.container_id==web`}, []bool{true, false, false}},
		{"event label of a decoded event", []string{`event.labels.tier==a`}, []bool{false, true, false}},
		{"event field presence", []string{`event.name`}, []bool{false, true, false}},
		{"inequality reads an absent field as empty", []string{`event.container_id!=web`}, []bool{false, true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := filters.ParseAll(tc.filters...)
			if err != nil {
				t.Fatal(err)
			}
			for i, env := range []*types.Envelope{exit, create, opaque} {
				if got := f.Match(Fields(env)); got != tc.want[i] {
					t.Errorf("%s: match = %v, want %v", env.Topic, got, tc.want[i])
				}
			}
		})
	}
}

func TestUnparsableFilterIsInvalidArgument(t *testing.T) {
	for _, s := range []string{`topic==`, `topic~=/[/`, `==x`} {
		if _, err := filters.ParseAll(s); !errdefs.IsInvalidArgument(err) {
			t.Errorf("ParseAll(%q) = %v, want InvalidArgument", s, err)
		}
	}
}
