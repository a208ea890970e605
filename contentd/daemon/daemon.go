// Package daemon is contentd as a component of the daemon kit: its settings
// and how it builds its services, run alone by cmd/contentd or beside the
// other components in one process by cmd/flotilla.
//
// contentd serves containerd's content, images, leases and namespaces
// services from one blob store and one metadata database.
package daemon

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	transferapi "github.com/containerd/containerd/api/services/transfer/v1"

	"github.com/flotilla/flotilla/contentd/content/handoff"
	contentservice "github.com/flotilla/flotilla/contentd/content/service"
	contentstore "github.com/flotilla/flotilla/contentd/content/store"
	contentdgc "github.com/flotilla/flotilla/contentd/gc"
	"github.com/flotilla/flotilla/contentd/images"
	"github.com/flotilla/flotilla/contentd/leases"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/contentd/namespaces"
	"github.com/flotilla/flotilla/contentd/namespaces/remote"
	"github.com/flotilla/flotilla/contentd/nodes"
	"github.com/flotilla/flotilla/contentd/streaming"
	"github.com/flotilla/flotilla/contentd/transfer"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/contentclient"
	kit "github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/gc"
	"github.com/flotilla/flotilla/services/introspect"
	"github.com/flotilla/flotilla/services/server"
)

// Config is contentd's settings, from its flags and config file.
type Config struct {
	config.Common
	// Eventd is the address of eventd (or of the gateway) to publish
	// events to; empty drops them.
	Eventd string `toml:"eventd"`
	// Taskd and Snapshotd are the addresses of taskd and snapshotd, asked
	// before a namespace is deleted whether they still hold containers or
	// snapshots in it; empty asks no one.
	Taskd     string `toml:"taskd"`
	Snapshotd string `toml:"snapshotd"`
	// Nodes maps node names (as gateways send them in the flotilla-node
	// metadata) to their snapshotd addresses, where pulls through that
	// node's gateway are unpacked; other calls are unpacked on Snapshotd.
	Nodes map[string]string `toml:"nodes"`
	// HostsDir is the certs.d directory of registry hosts.toml files.
	HostsDir string `toml:"hosts_dir"`
	// StallTimeout fails a registry transfer receiving nothing this long.
	StallTimeout config.Duration `toml:"stall_timeout"`
	// MaxConcurrentDownloads bounds the registry requests one pull has
	// open at once (whole blobs and ranged parts).
	MaxConcurrentDownloads int `toml:"max_concurrent_downloads"`
	// FetchPartSize is the size of the ranged parts larger blobs are
	// fetched in, in parallel, where the registry does ranges; negative
	// fetches every blob in one request.
	FetchPartSize int64 `toml:"fetch_part_size"`
	// FetchParallelAfter is how long the first part of a larger blob may
	// take before the rest is fetched in parallel parts (0: always).
	FetchParallelAfter config.Duration `toml:"fetch_parallel_after"`
	// IngestIdle is how long an ingest that no writer and no lease holds
	// may go without a write before it is removed.
	IngestIdle config.Duration `toml:"ingest_idle"`
	// ExpiryInterval is how often expired leases and idle ingests are
	// looked for; removing a lease schedules a garbage collection.
	ExpiryInterval config.Duration `toml:"expiry_interval"`
	// GCPauseThreshold bounds the share of time spent collecting after
	// deletions, as containerd's pause_threshold.
	GCPauseThreshold float64 `toml:"gc_pause_threshold"`
}

// Spec describes contentd to the daemon kit, reading its settings into cfg.
func Spec(cfg *Config) kit.Spec {
	return kit.Spec{
		Name:    "contentd",
		Summary: "stores blobs and the image catalogue: containerd's content, images, leases and namespaces services",
		Config:  cfg,
		Common:  &cfg.Common,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cfg.Eventd, "eventd", "",
				"address of eventd or the gateway (unix socket or tcp://host:port) to publish events to; empty discards them")
			fs.StringVar(&cfg.Taskd, "taskd", "",
				"address of taskd (unix socket or tcp://host:port), asked for containers before a namespace is deleted; empty asks no one")
			cfg.IngestIdle = config.Duration(contentstore.DefaultIngestIdle)
			fs.Var(&cfg.IngestIdle, "ingest-idle",
				"how long an ingest that no writer and no lease holds may go without a write before it is removed")
			fs.StringVar(&cfg.Snapshotd, "snapshotd", "",
				"address of snapshotd (unix socket or tcp://host:port), asked for snapshots before a namespace is deleted and used to unpack pulls of nodes not listed in the config's nodes; empty asks no one")
			fs.StringVar(&cfg.HostsDir, "hosts-dir", "",
				"directory of registry host configurations in containerd's certs.d layout (<host>/hosts.toml), used when a client names none")
			cfg.StallTimeout = config.Duration(30 * time.Second)
			fs.Var(&cfg.StallTimeout, "stall-timeout",
				"fail a registry transfer that receives nothing for this long, however long the whole pull takes")
			fs.IntVar(&cfg.MaxConcurrentDownloads, "max-concurrent-downloads", 4,
				"registry requests one pull has open at once (whole blobs and ranged parts); the lowest layers get them first")
			fs.Int64Var(&cfg.FetchPartSize, "fetch-part-size", transfer.DefaultPartSize,
				"size in bytes of the ranged parts a larger blob is fetched in, in parallel, where the registry does ranges; negative: one request per blob")
			cfg.FetchParallelAfter = config.Duration(transfer.DefaultParallelAfter)
			fs.Var(&cfg.FetchParallelAfter, "fetch-parallel-after",
				"how long the first part of a larger blob may take before the rest is fetched in parallel parts (a faster registry gets the rest in one request); 0: always in parallel")
			cfg.ExpiryInterval = config.Duration(time.Minute)
			fs.Var(&cfg.ExpiryInterval, "expiry-interval",
				"how often to look for expired leases (containerd.io/gc.expire) and idle ingests; removing a lease schedules a garbage collection")
			fs.Float64Var(&cfg.GCPauseThreshold, "gc-pause-threshold", contentdgc.DefaultSchedule.PauseThreshold,
				"the most of the time collections started by deletions may take (containerd's pause_threshold)")
		},
		Plugins: introspect.Services("content", "images", "leases", "namespaces", "transfer", "streaming"),
		Setup:   func(ctx context.Context, srv *server.Server) error { return setup(ctx, srv, cfg) },
	}
}

func setup(_ context.Context, srv *server.Server, cfg *Config) error {
	publisher, err := kit.Publisher(srv, cfg.Eventd)
	if err != nil {
		return err
	}
	db, err := metadata.Open(filepath.Join(cfg.Root, "meta.db"))
	if err != nil {
		return err
	}
	srv.OnStop(func() { db.Close() })

	// contentd's connections: its identity, registry and tracing.
	dialer := dial.For(srv)
	var occupants namespaces.Occupants
	if dialer.Registry != nil {
		// Every node's taskd and snapshotd, as they register.
		fleet := remote.NewFleet(dialer, cfg.Taskd, cfg.Snapshotd)
		srv.OnStop(func() { fleet.Close() })
		occupants = fleet
	} else {
		peers, err := remote.New(dialer, cfg.Taskd, cfg.Snapshotd)
		if err != nil {
			return err
		}
		if peers != nil {
			srv.OnStop(func() { peers.Close() })
			occupants = peers
		}
	}

	grpcSrv := srv.GRPC()
	log := srv.Logger()
	namespacesapi.RegisterNamespacesServer(grpcSrv,
		namespaces.NewService(namespaces.NewStore(db), occupants, publisher, log))
	imageStore := images.NewStore(db)
	imageService := images.NewService(imageStore, publisher, log)
	imagesapi.RegisterImagesServer(grpcSrv, imageService)
	leaseStore := leases.NewStore(db)
	leaseService := leases.NewService(leaseStore)
	leasesapi.RegisterLeasesServer(grpcSrv, leaseService)

	contentStore, err := contentstore.New(filepath.Join(cfg.Root, "content"), db)
	if err != nil {
		return err
	}
	// Garbage collection across contentd, and taskd and snapshotd when
	// configured: every write of contentd's stores reports to the tracker.
	tracker := gc.NewTracker()
	contentStore.SetTracker(tracker)
	imageStore.SetTracker(tracker)
	leaseStore.SetTracker(tracker)
	var gcPeers contentdgc.Peers
	var fleet *contentdgc.Fleet
	gcCtx, stopGC := context.WithCancel(context.Background())
	var gcDone sync.WaitGroup
	srv.OnStop(func() { stopGC(); gcDone.Wait() })
	if dialer.Registry != nil {
		// Every node's snapshotd and taskd, as they register; a node once
		// seen is waited for (ARCHITECTURE.md, garbage collection).
		fleet, err = contentdgc.OpenFleet(dialer, filepath.Join(cfg.Root, "gc", "nodes.json"), log)
		if err != nil {
			return err
		}
		srv.OnStop(func() { fleet.Close() })
		gcDone.Go(func() { fleet.Watch(gcCtx) })
		gcPeers = fleet
	} else {
		static, err := contentdgc.NewStaticPeers(dialer, cfg.Taskd, cfg.Snapshotd)
		if err != nil {
			return err
		}
		srv.OnStop(func() { static.Close() })
		if cfg.Snapshotd != "" && cfg.Taskd == "" {
			log.Warn("snapshots are not garbage collected: contentd knows snapshotd but not taskd (--taskd), whose containers use them")
		}
		gcPeers = static
	}
	collector := contentdgc.New(
		gc.NewStore("contentd", tracker, contentdgc.NewSource(db, contentStore, time.Duration(cfg.IngestIdle))),
		gcPeers, contentdgc.NewMetrics(srv.Registry()), log)
	imageService.SetCollector(collector)
	leaseService.SetCollector(collector)
	contentdgc.NewService(collector, fleet).Register(grpcSrv)
	gcDone.Go(func() { collector.Run(gcCtx, contentdgc.Schedule{PauseThreshold: cfg.GCPauseThreshold}) })

	streams := streaming.NewManager()
	streamingapi.RegisterStreamingServer(grpcSrv, streaming.NewService(streams))
	var unpackNodes transfer.Nodes
	if cfg.Snapshotd != "" || len(cfg.Nodes) > 0 || dialer.Registry != nil {
		n := nodes.NewStatic(dialer, cfg.Nodes, cfg.Snapshotd)
		srv.OnStop(func() { n.Close() })
		unpackNodes = n
	}
	transfers := transfer.New(transfer.Config{
		Leases:                 pullLeases{leaseStore, collector},
		HostsDir:               cfg.HostsDir,
		StallTimeout:           time.Duration(cfg.StallTimeout),
		MaxConcurrentDownloads: cfg.MaxConcurrentDownloads,
		FetchPartSize:          cfg.FetchPartSize,
		FetchParallelAfter:     time.Duration(cfg.FetchParallelAfter),
	}, contentStore, imageService, streams, unpackNodes, log)
	transferapi.RegisterTransferServer(grpcSrv, transfers)
	// snapshotd follows the layers a pull is still fetching through Read.
	contentservice.New(contentStore, publisher, contentservice.WithFollower(transfers)).Register(grpcSrv)
	handoffs := handoff.NewServer(contentStore, transfers, log)
	srv.Registry().MustRegister(handoffs.Collectors()...)
	if err := serveHandoff(srv, cfg.Address, handoffs); err != nil {
		return err
	}

	stop := make(chan struct{})
	done := make(chan struct{})
	go sweep(srv, leaseStore, contentStore, collector, time.Duration(cfg.ExpiryInterval), time.Duration(cfg.IngestIdle), stop, done)
	srv.OnStop(func() { close(stop); <-done })
	return nil
}

// serveHandoff serves the blob handoff beside a unix socket address (a
// snapshotd on this host reads layers from the files it is handed rather
// than through Content.Read); a TCP address serves none.
func serveHandoff(srv *server.Server, address string, h *handoff.Server) error {
	network, path, err := server.SplitAddress(address)
	if err != nil || network != "unix" {
		return nil
	}
	l, err := server.ListenSeqpacket(path + contentclient.HandoffSuffix)
	if err != nil {
		return fmt.Errorf("content handoff: %w", err)
	}
	go func() {
		if err := h.Serve(l); err != nil {
			srv.Logger().Error("content handoff stopped serving", "error", err)
		}
	}()
	srv.OnStop(func() {
		l.Close()
		h.Stop()
		os.Remove(path + contentclient.HandoffSuffix)
	})
	return nil
}

// sweep removes expired leases, scheduling a collection of what they held,
// and ingests idle for longer than ingestIdle, every interval until stop
// closes.
func sweep(srv *server.Server, store *leases.BoltStore, content *contentstore.Store, collector *contentdgc.Collector,
	interval, ingestIdle time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			deleted, err := store.DeleteExpired(now)
			if err != nil {
				srv.Logger().Warn("remove expired leases", "error", err)
			}
			for ns, ids := range deleted {
				srv.Logger().Info("removed expired leases", "namespace", ns, "leases", ids)
			}
			if len(deleted) > 0 {
				collector.Deleted(context.Background(), false)
			}
			if ingestIdle <= 0 {
				continue
			}
			removed, err := content.RemoveIdleIngests(now, ingestIdle)
			if err != nil {
				srv.Logger().Warn("remove idle ingests", "error", err)
			}
			for ns, refs := range removed {
				srv.Logger().Info("removed idle ingests", "namespace", ns, "refs", refs)
			}
		}
	}
}

// pullLeases gives a server-side pull whose caller sent no lease one of its
// own (transfer.Leases); deleting it schedules a collection, as deleting a
// lease through the Leases service does.
type pullLeases struct {
	store     *leases.BoltStore
	collector *contentdgc.Collector
}

func (l pullLeases) Create(ctx context.Context, expire time.Duration) (string, error) {
	lease, err := l.store.Create(ctx, "", map[string]string{
		leases.LabelExpire: time.Now().Add(expire).UTC().Format(time.RFC3339),
	})
	return lease.ID, err
}

func (l pullLeases) Delete(ctx context.Context, id string) error {
	if err := l.store.Delete(ctx, id); err != nil {
		return err
	}
	return l.collector.Deleted(ctx, false)
}
