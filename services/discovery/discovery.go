// Package discovery is Flotilla's service registry, kept in Redis: every
// daemon registers what it is (its component name), the node it runs on
// and the address it serves, under a key that lives three discovery
// intervals and is renewed every interval; it deletes the key when it stops.
// Clients resolve addresses of the form discover://<service>[?node=<node>]
// through the registry and follow its changes without restarting: a gRPC
// resolver reads the registry again every interval (and at once when a
// connection fails).
//
// Keys are flotilla:instance:<service>:<id>, each holding one Instance as
// JSON; a service's instances are found with SCAN on its prefix.
package discovery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/redis/go-redis/v9"

	"github.com/flotilla/flotilla/services/mtls"
)

// Scheme is the address scheme resolved through the registry:
// discover://contentd, discover://snapshotd?node=b.
const Scheme = "discover"

// KeyPrefix starts every registry key.
const KeyPrefix = "flotilla:instance:"

// Lifetimes is how many intervals a registration outlives its last renewal.
const Lifetimes = 3

// Instance is one running daemon as registered.
type Instance struct {
	ID       string    `json:"id"`
	Service  string    `json:"service"` // component name: contentd, snapshotd, taskd, eventd, gateway
	Node     string    `json:"node"`
	Address  string    `json:"address"` // as dial takes it: host:port, tcp://host:port or a unix socket path
	Version  string    `json:"version,omitempty"`
	Revision string    `json:"revision,omitempty"`
	PID      int       `json:"pid,omitempty"`
	Started  time.Time `json:"started"`
	// Metrics is the Prometheus address, if the daemon serves one.
	Metrics string `json:"metrics,omitempty"`
}

// Registry is a connection to the service registry. It is safe for
// concurrent use.
type Registry struct {
	rdb      *redis.Client
	interval time.Duration
	log      *slog.Logger
	url      string
}

// Open connects to the registry at Redis url (redis://host:port/db,
// rediss:// for TLS with id's certificate, unix:///path). interval is how
// often registrations are renewed and resolvers read the registry.
func Open(rawURL string, id *mtls.Identity, interval time.Duration, log *slog.Logger) (*Registry, error) {
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("discovery %s: %w", redacted(rawURL), errors.Join(err, errdefs.ErrInvalidArgument))
	}
	if opts.TLSConfig != nil {
		if id == nil {
			return nil, fmt.Errorf("discovery %s: %w", redacted(rawURL), mtls.ErrNoIdentity)
		}
		opts.TLSConfig = id.Client(opts.TLSConfig.ServerName)
		opts.TLSConfig.NextProtos = nil // Redis speaks RESP, not HTTP/2
	}
	if interval <= 0 {
		return nil, fmt.Errorf("discovery interval %s: must be positive: %w", interval, errdefs.ErrInvalidArgument)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts.DialTimeout = min(interval, 5*time.Second)
	opts.ReadTimeout = min(interval, 3*time.Second)
	opts.WriteTimeout = opts.ReadTimeout
	return &Registry{rdb: redis.NewClient(opts), interval: interval, log: log, url: redacted(rawURL)}, nil
}

func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Interval is how often registrations are renewed and the registry read.
func (r *Registry) Interval() time.Duration { return r.interval }

// Close closes the connection.
func (r *Registry) Close() error { return r.rdb.Close() }

func key(service, id string) string { return KeyPrefix + service + ":" + id }

// Register registers inst (an ID is made up when it has none) and renews
// the registration every interval until ctx ends or the returned function
// is called, which deletes it. A renewal that fails is logged and retried
// at the next interval; the registration then expires on its own if Redis
// stays unreachable.
func (r *Registry) Register(ctx context.Context, inst Instance) (deregister func(), err error) {
	if inst.Service == "" || inst.Address == "" {
		return nil, fmt.Errorf("register %+v: service and address are required: %w", inst, errdefs.ErrInvalidArgument)
	}
	if strings.ContainsAny(inst.Service, ":*?[]") {
		return nil, fmt.Errorf("register service %q: the name may not hold ':' or glob characters: %w", inst.Service, errdefs.ErrInvalidArgument)
	}
	if inst.ID == "" {
		b := make([]byte, 6)
		rand.Read(b)
		inst.ID = inst.Node + "-" + hex.EncodeToString(b)
	}
	if inst.Started.IsZero() {
		inst.Started = time.Now()
	}
	value, err := json.Marshal(inst)
	if err != nil {
		return nil, err
	}
	k := key(inst.Service, inst.ID)
	ttl := Lifetimes * r.interval
	if err := r.rdb.Set(ctx, k, value, ttl).Err(); err != nil {
		return nil, fmt.Errorf("register %s at %s in %s: %w", inst.Service, inst.Address, r.url, errors.Join(err, errdefs.ErrUnavailable))
	}
	r.log.Info("registered", "service", inst.Service, "node", inst.Node, "address", inst.Address, "registry", r.url, "ttl", ttl)

	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(r.interval)
		defer t.Stop()
		failing := false
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			err := r.rdb.Set(ctx, k, value, ttl).Err()
			switch {
			case err != nil && ctx.Err() == nil && !failing:
				r.log.Warn("registration not renewed; retrying every interval", "registry", r.url, "error", err)
				failing = true
			case err == nil && failing:
				r.log.Info("registration renewed again", "registry", r.url)
				failing = false
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
			dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer dcancel()
			if err := r.rdb.Del(dctx, k).Err(); err != nil {
				r.log.Warn("not deregistered; the registration expires on its own", "registry", r.url, "ttl", ttl, "error", err)
				return
			}
			r.log.Info("deregistered", "service", inst.Service, "address", inst.Address)
		})
	}, nil
}

// List returns the live instances of service ("" for every service),
// ordered by service, node and start time (newest first).
func (r *Registry) List(ctx context.Context, service string) ([]Instance, error) {
	pattern := KeyPrefix + "*"
	if service != "" {
		pattern = KeyPrefix + service + ":*"
	}
	var keys []string
	iter := r.rdb.Scan(ctx, 0, pattern, 256).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("discovery %s: list %s: %w", r.url, pattern, errors.Join(err, errdefs.ErrUnavailable))
	}
	if len(keys) == 0 {
		return nil, nil
	}
	values, err := r.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("discovery %s: read %d registrations: %w", r.url, len(keys), errors.Join(err, errdefs.ErrUnavailable))
	}
	var out []Instance
	for i, v := range values {
		s, ok := v.(string)
		if !ok { // expired between SCAN and MGET
			continue
		}
		var inst Instance
		if err := json.Unmarshal([]byte(s), &inst); err != nil {
			r.log.Warn("unreadable registration ignored", "key", keys[i], "error", err)
			continue
		}
		out = append(out, inst)
	}
	slices.SortFunc(out, func(a, b Instance) int {
		if c := strings.Compare(a.Service, b.Service); c != 0 {
			return c
		}
		if c := strings.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		return b.Started.Compare(a.Started)
	})
	return out, nil
}

// Target is what a discover:// address asks for.
type Target struct {
	Service string
	Node    string // "" for any node
}

// ParseAddress reads discover://<service>[?node=<node>]; ok is false for
// addresses of other schemes.
func ParseAddress(addr string) (t Target, ok bool, err error) {
	if !strings.HasPrefix(addr, Scheme+"://") {
		return Target{}, false, nil
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return Target{}, true, fmt.Errorf("address %q: want discover://<service>[?node=<node>]: %w", addr, errdefs.ErrInvalidArgument)
	}
	return Target{Service: u.Host, Node: u.Query().Get("node")}, true, nil
}

// Address is the discover:// address of t.
func (t Target) Address() string {
	a := Scheme + "://" + t.Service
	if t.Node != "" {
		a += "?node=" + url.QueryEscape(t.Node)
	}
	return a
}

func (t Target) String() string {
	if t.Node == "" {
		return t.Service
	}
	return t.Service + " on node " + t.Node
}

// Lookup returns the live instances t names, newest first, or a NotFound
// error naming t when there is none.
func (r *Registry) Lookup(ctx context.Context, t Target) ([]Instance, error) {
	all, err := r.List(ctx, t.Service)
	if err != nil {
		return nil, err
	}
	var out []Instance
	for _, inst := range all {
		if t.Node == "" || inst.Node == t.Node {
			out = append(out, inst)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %s is registered in %s: %w", t, r.url, errdefs.ErrNotFound)
	}
	slices.SortFunc(out, func(a, b Instance) int { return b.Started.Compare(a.Started) })
	return out, nil
}
