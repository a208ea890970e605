// Package container runs, lists, enters and removes containers through
// containerd's Containers, Snapshots and Tasks services, as ctr and nerdctl
// do: the image's rootfs is a snapshot on its top layer, the runtime spec
// is built on the client, and the task's stdio are FIFOs or a log file.
package container

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/console"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"

	"github.com/flotilla/flotilla/flotctl/client"
	"github.com/flotilla/flotilla/flotctl/image"
	"github.com/flotilla/flotilla/flotctl/oci"
	"github.com/flotilla/flotilla/flotctl/stdio"
	"github.com/flotilla/flotilla/services/identifiers"
	"github.com/flotilla/flotilla/services/namespace"
)

// Labels flotctl puts on the containers it creates.
const (
	// LabelLogURI is where a detached container's output goes (nerdctl
	// keeps it under a label of the same purpose).
	LabelLogURI = "flotilla.flotctl/log-uri"
	// RuntimeRunc is the runtime containers are created with.
	RuntimeRunc = "io.containerd.runc.v2"
	// DefaultSnapshotter is the snapshotter used when none is named.
	DefaultSnapshotter = "overlayfs"
)

// RunOptions are what `flotctl run` takes.
type RunOptions struct {
	// ID names the container; empty picks a random one.
	ID          string
	Image       string
	Args        []string
	Snapshotter string
	Platform    platforms.MatchComparer
	// SpecOpts are applied after the image's config.
	SpecOpts []oci.Opt
	TTY      bool
	// Detach starts the task with its output going to LogDir/<ns>/<id>.log
	// and returns.
	Detach bool
	LogDir string
	// Remove deletes task, container and snapshot once the task exits.
	Remove bool
	// Streams are flotctl's side of the task's stdio when attached.
	Streams stdio.Streams
	// FIFODir is where the stdio FIFOs are created.
	FIFODir string
	// Console, when TTY, is the terminal flotctl runs in: it is set raw and
	// its size follows to the task.
	Console Console
}

// Console is the part of a github.com/containerd/console terminal a run
// uses: its size, given to the task's terminal at creation.
type Console interface {
	Size() (console.WinSize, error)
}

// Running is a task started by Run that the caller waits for.
type Running struct {
	c      *client.Client
	ID     string
	Pid    uint32
	opts   RunOptions
	io     *stdio.Attached
	exit   chan exitResult
	rmSnap string
}

type exitResult struct {
	code uint32
	err  error
}

// NewID returns a random container id, 12 hex digits as docker prints them.
func NewID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Run creates container o.ID from o.Image and starts its task. Attached
// runs return a Running to Wait on; detached runs return once started.
// Whatever it created is removed again when a later step fails.
func Run(ctx context.Context, c *client.Client, o RunOptions) (_ *Running, retErr error) {
	if o.ID == "" {
		o.ID = NewID()
	}
	if err := identifiers.Validate(o.ID); err != nil {
		return nil, fmt.Errorf("container name: %w", err)
	}
	if o.Snapshotter == "" {
		o.Snapshotter = DefaultSnapshotter
	}
	if o.Platform == nil {
		o.Platform = platforms.Default()
	}
	ctx = c.WithNamespace(ctx)
	var undo []func(context.Context)
	defer func() {
		if retErr != nil {
			cctx, cancel := cleanupContext(ctx)
			defer cancel()
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i](cctx)
			}
		}
	}()

	// A lease keeps what the unpack commits from GC until the container
	// record references the snapshot.
	lctx, release, err := client.WithLease(ctx, c.Leases)
	if err != nil {
		return nil, err
	}
	defer release()

	img, err := image.Resolve(lctx, c.Images, c.Content, o.Image, o.Platform)
	if err != nil {
		return nil, err
	}
	if _, err := image.Unpack(lctx, image.Services{Content: c.Content, Snapshots: c.Snapshots, Diff: c.Diff}, img, o.Snapshotter); err != nil {
		return nil, fmt.Errorf("unpack %s into %s: %w", o.Image, o.Snapshotter, err)
	}
	parent := ""
	if n := len(img.ChainIDs); n > 0 {
		parent = img.ChainIDs[n-1].String()
	}
	prep, err := c.Snapshots.Prepare(lctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: o.Snapshotter, Key: o.ID, Parent: parent})
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			return nil, fmt.Errorf("a snapshot named %s already exists in %s (flotctl rm %s?): %w", o.ID, o.Snapshotter, o.ID, err)
		}
		return nil, fmt.Errorf("prepare rootfs: %w", err)
	}
	undo = append(undo, func(ctx context.Context) {
		c.Snapshots.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: o.Snapshotter, Key: o.ID})
	})

	ns, _ := namespace.FromContext(ctx)
	opts := []oci.Opt{oci.WithImageConfig(img.Config.Config, o.Args), oci.WithHostname(o.ID)}
	if o.TTY {
		var sz console.WinSize
		if o.Console != nil {
			sz, _ = o.Console.Size()
		}
		opts = append(opts, oci.WithTTY(uint(sz.Width), uint(sz.Height)))
	}
	spec, err := oci.Build(ns, o.ID, append(opts, o.SpecOpts...)...)
	if err != nil {
		return nil, err
	}
	specAny, err := oci.ToAny(spec)
	if err != nil {
		return nil, err
	}

	var cfg stdio.Config
	var attached *stdio.Attached
	labels := map[string]string{}
	if o.Detach {
		logPath := filepath.Join(o.LogDir, ns, o.ID+".log")
		if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
			return nil, fmt.Errorf("log directory: %w", err)
		}
		cfg = stdio.LogFile(logPath)
		labels[LabelLogURI] = cfg.Stdout
		undo = append(undo, func(context.Context) { os.Remove(logPath) })
	}
	_, err = c.Containers.Create(ctx, &containersapi.CreateContainerRequest{Container: &containersapi.Container{
		ID:          o.ID,
		Image:       o.Image,
		Labels:      labels,
		Runtime:     &containersapi.Container_Runtime{Name: RuntimeRunc},
		Spec:        specAny,
		Snapshotter: o.Snapshotter,
		SnapshotKey: o.ID,
	}})
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			return nil, fmt.Errorf("container %s already exists (flotctl rm -f %s, or choose another --name): %w", o.ID, o.ID, err)
		}
		return nil, fmt.Errorf("create container: %w", err)
	}
	undo = append(undo, func(ctx context.Context) {
		c.Containers.Delete(ctx, &containersapi.DeleteContainerRequest{ID: o.ID})
	})

	if !o.Detach {
		attached, err = stdio.NewFIFOs(ctx, o.FIFODir, o.ID, stdio.Streams{
			Stdin: o.Streams.Stdin, Stdout: o.Streams.Stdout, Stderr: o.Streams.Stderr, Terminal: o.TTY,
		}, func() {
			cctx, cancel := cleanupContext(ctx)
			defer cancel()
			c.Tasks.CloseIO(cctx, &tasksapi.CloseIORequest{ContainerID: o.ID, Stdin: true})
		})
		if err != nil {
			return nil, err
		}
		undo = append(undo, func(context.Context) { attached.Close() })
		cfg = attached.Config()
	}
	task, err := c.Tasks.Create(ctx, &tasksapi.CreateTaskRequest{
		ContainerID: o.ID, Rootfs: prep.Mounts,
		Stdin: cfg.Stdin, Stdout: cfg.Stdout, Stderr: cfg.Stderr, Terminal: o.TTY,
	})
	if err != nil {
		return nil, fmt.Errorf("create task: %w", err)
	}
	if attached != nil {
		attached.Created()
	}
	undo = append(undo, func(ctx context.Context) {
		c.Tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: o.ID, Signal: 9, All: true})
		c.Tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: o.ID})
	})
	r := &Running{c: c, ID: o.ID, Pid: task.Pid, opts: o, io: attached, exit: make(chan exitResult, 1)}
	if !o.Detach {
		// Wait before Start, so that an exit right after Start is not missed.
		go func() {
			resp, err := c.Tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: o.ID})
			r.exit <- exitResult{code: resp.GetExitStatus(), err: err}
		}()
	}
	if _, err := c.Tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: o.ID}); err != nil {
		return nil, fmt.Errorf("start task: %w", err)
	}
	return r, nil
}

// Resize tells the task its terminal's new size.
func (r *Running) Resize(ctx context.Context, width, height uint16) error {
	_, err := r.c.Tasks.ResizePty(r.c.WithNamespace(ctx), &tasksapi.ResizePtyRequest{ContainerID: r.ID, Width: uint32(width), Height: uint32(height)})
	return err
}

// Signal sends sig to the task's init process.
func (r *Running) Signal(ctx context.Context, sig uint32) error {
	_, err := r.c.Tasks.Kill(r.c.WithNamespace(ctx), &tasksapi.KillRequest{ContainerID: r.ID, Signal: sig})
	return err
}

// Wait waits for the task to exit and for its output to be copied, then
// (with Remove) deletes task, container and snapshot. It returns the exit
// status.
func (r *Running) Wait(ctx context.Context) (uint32, error) {
	var res exitResult
	select {
	case res = <-r.exit:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if res.err != nil {
		return 0, fmt.Errorf("wait for %s: %w", r.ID, res.err)
	}
	if r.io != nil {
		// The shim closes the FIFOs once the output is drained; do not
		// hang forever on a shim that does not.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r.io.Wait(wctx)
		cancel()
		r.io.Close()
	}
	if r.opts.Remove {
		cctx, cancel := cleanupContext(r.c.WithNamespace(ctx))
		defer cancel()
		if err := remove(cctx, r.c, r.ID, false); err != nil {
			return res.code, err
		}
	}
	return res.code, nil
}

// cleanupContext is ctx without its cancellation and with a bound, for
// removing what a cancelled call left behind.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}
