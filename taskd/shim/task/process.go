package task

import (
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/flotilla/flotilla/taskd/shim/cgroup"
	"github.com/flotilla/flotilla/taskd/shim/stdio"
)

// container is one OCI container supervised by the shim. Its fields are
// guarded by Service.mu, except those only its lifecycle holder touches.
type container struct {
	id      string
	bundle  string
	runtime *runc.Runc
	opts    *options.Options
	// lifecycle serialises the runtime calls that change the container
	// (create, start, delete, pause, resume, exec start, update, checkpoint).
	lifecycle sync.Mutex

	mounts []string // what the shim mounted for the rootfs, in order; unmounted on delete
	ownPID bool     // the container has its own PID namespace
	paused bool
	oom    *cgroup.OOMWatch // nil when OOM kills cannot be watched

	init  *process
	execs map[string]*process
	// initExit is the init process's exit, held back while execs still run
	// or are being started, so that their exits are published first.
	initExit *runc.Exit
	// startingExecs counts the execs whose runtime exec is under way.
	startingExecs int
}

// process is the init process (execID "") or an exec of a container.
type process struct {
	c      *container
	execID string
	stdio  stdio.Stdio
	spec   *specs.Process // execs only

	streams *stdio.Streams
	ptySize *[2]uint32 // width, height asked for before streams existed
	// closeStdin: CloseIO came before the streams existed (an exec not yet
	// started); its stdin is closed as soon as they do.
	closeStdin bool
	pid        int
	status     tasktypes.Status // CREATED, RUNNING or STOPPED
	started    bool             // the start event was published
	// starting is set while the runtime starts the process. For the init,
	// an exit reaped meanwhile waits in pendingExit for Start to report it,
	// so the start event precedes the exit event.
	starting    bool
	pendingExit *runc.Exit

	exitStatus int
	exitedAt   time.Time
	exited     chan struct{} // closed once the exit is final
}

func newProcess(c *container, execID string, s stdio.Stdio) *process {
	return &process{c: c, execID: execID, stdio: s, status: tasktypes.Status_CREATED, exited: make(chan struct{})}
}

// id is the process's ID in events: the exec ID, or the container ID for init.
func (p *process) id() string {
	if p.execID == "" {
		return p.c.id
	}
	return p.execID
}

func (p *process) isStopped() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}
