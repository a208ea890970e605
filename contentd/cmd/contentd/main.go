// Command contentd serves containerd's content, images, leases and
// namespaces services from one blob store and one metadata database.
package main

import (
	"context"
	"flag"
	"path/filepath"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	transferapi "github.com/containerd/containerd/api/services/transfer/v1"

	contentservice "github.com/flotilla/flotilla/contentd/content/service"
	contentstore "github.com/flotilla/flotilla/contentd/content/store"
	"github.com/flotilla/flotilla/contentd/images"
	"github.com/flotilla/flotilla/contentd/leases"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/contentd/namespaces"
	"github.com/flotilla/flotilla/contentd/namespaces/remote"
	"github.com/flotilla/flotilla/contentd/nodes"
	"github.com/flotilla/flotilla/contentd/streaming"
	"github.com/flotilla/flotilla/contentd/transfer"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/introspect"
	"github.com/flotilla/flotilla/services/server"
)

type contentdConfig struct {
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
	// MaxConcurrentDownloads bounds the blobs one pull fetches at once.
	MaxConcurrentDownloads int `toml:"max_concurrent_downloads"`
	// IngestIdle is how long an ingest that no writer and no lease holds
	// may go without a write before it is removed.
	IngestIdle config.Duration `toml:"ingest_idle"`
}

// leaseSweepInterval is how often expired leases are removed.
const leaseSweepInterval = time.Minute

func main() {
	var cfg contentdConfig
	daemon.Main(spec(&cfg))
}

// spec describes contentd to the daemon kit, reading its settings into cfg.
func spec(cfg *contentdConfig) daemon.Spec {
	return daemon.Spec{
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
				"blobs one pull fetches at once")
		},
		Plugins: introspect.Services("content", "images", "leases", "namespaces", "transfer", "streaming"),
		Setup:   func(ctx context.Context, srv *server.Server) error { return setup(ctx, srv, cfg) },
	}
}

func setup(_ context.Context, srv *server.Server, cfg *contentdConfig) error {
	publisher, err := daemon.Publisher(srv, cfg.Eventd)
	if err != nil {
		return err
	}
	db, err := metadata.Open(filepath.Join(cfg.Root, "meta.db"))
	if err != nil {
		return err
	}
	srv.OnStop(func() { db.Close() })

	var occupants namespaces.Occupants
	peers, err := remote.New(cfg.Taskd, cfg.Snapshotd)
	if err != nil {
		return err
	}
	if peers != nil {
		srv.OnStop(func() { peers.Close() })
		occupants = peers
	}

	grpcSrv := srv.GRPC()
	log := srv.Logger()
	namespacesapi.RegisterNamespacesServer(grpcSrv,
		namespaces.NewService(namespaces.NewStore(db), occupants, publisher, log))
	imageService := images.NewService(images.NewStore(db), publisher, log)
	imagesapi.RegisterImagesServer(grpcSrv, imageService)
	leaseStore := leases.NewStore(db)
	leasesapi.RegisterLeasesServer(grpcSrv, leases.NewService(leaseStore))

	contentStore, err := contentstore.New(filepath.Join(cfg.Root, "content"), db)
	if err != nil {
		return err
	}
	contentservice.New(contentStore, publisher).Register(grpcSrv)

	streams := streaming.NewManager()
	streamingapi.RegisterStreamingServer(grpcSrv, streaming.NewService(streams))
	var unpackNodes transfer.Nodes
	if cfg.Snapshotd != "" || len(cfg.Nodes) > 0 {
		n := nodes.NewStatic(cfg.Nodes, cfg.Snapshotd)
		srv.OnStop(func() { n.Close() })
		unpackNodes = n
	}
	transferapi.RegisterTransferServer(grpcSrv, transfer.New(transfer.Config{
		HostsDir:               cfg.HostsDir,
		StallTimeout:           time.Duration(cfg.StallTimeout),
		MaxConcurrentDownloads: cfg.MaxConcurrentDownloads,
	}, contentStore, imageService, streams, unpackNodes, log))

	stop := make(chan struct{})
	done := make(chan struct{})
	go sweep(srv, leaseStore, contentStore, time.Duration(cfg.IngestIdle), stop, done)
	srv.OnStop(func() { close(stop); <-done })
	return nil
}

// sweep removes expired leases, and ingests idle for longer than
// ingestIdle, every leaseSweepInterval until stop closes.
func sweep(srv *server.Server, store *leases.BoltStore, content *contentstore.Store, ingestIdle time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(leaseSweepInterval)
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
