package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla/flotilla/flotctl/stack"
)

// Namespace is the containerd namespace every workload runs in.
const Namespace = "bench"

// System is one server of containerd's API under test, on its own root,
// state and socket.
type System struct {
	// Key names the system in results.json: "flotilla", "containerd2.4", …
	Key string
	// Name is how the chart names it; Short heads the table's ratio columns.
	Name, Short string
	// Flotilla marks Flotilla's modes, whose figures are divided by each
	// containerd's.
	Flotilla bool
	// Version is what the system reports about itself.
	Version string
	// Socket serves containerd's API.
	Socket string
	// Dir holds everything the system keeps; it is removed at the end.
	Dir string

	// ctr is the ctr that runs containers on it.
	ctr string
	// pull fetches and unpacks ref with the system's own puller.
	pull func(ctx context.Context, ref string) error
	// daemons lists the processes that make up the system at idle (shims
	// excluded).
	daemons func() ([]int, error)
	// shim is the base name of the per-container shim's executable.
	shim string
	// runcRoot, when set, is given to ctr run (containerd's default,
	// /run/containerd/runc, would be shared between the two containerds).
	runcRoot string
	// fifoDir is where ctr makes the containers' stdio FIFOs.
	fifoDir string
	// publishSocket and subscribeSocket are the events service's sockets
	// events are published to and read from.
	publishSocket, subscribeSocket string
}

// Tools are the programs the bench runs.
type Tools struct {
	// Bin is Flotilla's ./bin.
	Bin string
	// Ctr is Debian's ctr (1.6), the client ctr run uses on every system.
	Ctr string
	// Containerd16 is Debian's containerd; its shim is found on $PATH.
	Containerd16 string
	// Containerd2Dir holds containerd 2.4.2, its runc shim and its ctr.
	Containerd2Dir string
	// Runc is the OCI runtime, for the floor of ctr run.
	Runc string
	// Redis is redis-server, which carries events between two eventd.
	Redis string
}

// startFlotilla starts one node's Flotilla stack from tools.Bin on dir, as
// make up does (metrics on), in mode: a process per daemon, or every
// component in one flotilla process. The separate stack also gets a Redis
// and two more eventd sharing it, for events across processes; the
// one-process stack's events go through its gateway to its own eventd.
func startFlotilla(ctx context.Context, cl *Cleanups, tools Tools, dir string, mode stack.Mode, pprof bool, logf func(string, ...any)) (*System, error) {
	l := stack.DefaultLayout(tools.Bin)
	l.Mode = mode
	l.Root = filepath.Join(dir, "root")
	l.State = filepath.Join(dir, "state")
	l.RedisURL = ""
	l.LogLevel = "info"
	port, err := freePortRange(len(stack.Order))
	if err != nil {
		return nil, err
	}
	l.MetricsBasePort = port
	if pprof {
		l.ExtraArgs = map[string][]string{}
		for _, svc := range l.Services() {
			l.ExtraArgs[svc.Name] = []string{"--pprof"}
			logf("%s (%s mode): go tool pprof http://%s/debug/pprof/profile", svc.Name, mode, svc.MetricsAddress)
		}
	}
	cl.Push(func() {
		if err := stack.Down(l, 10*time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "flotilla-bench: stop Flotilla: %v\n", err)
		}
	})
	upCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := stack.Up(upCtx, l, 60*time.Second); err != nil {
		return nil, fmt.Errorf("start Flotilla: %w", err)
	}
	key, name, short := "flotilla", "Flotilla", "fl"
	pub, sub := l.GatewaySocket(), l.GatewaySocket()
	if mode == stack.OneProcess {
		key, name, short = "flotilla1", "Flotilla one process", "fl1"
	} else {
		var err error
		if pub, sub, err = startEventPair(ctx, cl, tools, dir); err != nil {
			return nil, err
		}
	}
	version, _ := run(ctx, filepath.Join(tools.Bin, "flotctl"), "--address", l.GatewaySocket(), "version")
	s := &System{
		Key: key, Name: name, Short: short, Flotilla: true,
		Version: serverVersion(version), Socket: l.GatewaySocket(), Dir: dir,
		ctr: tools.Ctr, shim: "taskd-shim", fifoDir: filepath.Join(dir, "fifo"),
		publishSocket: pub, subscribeSocket: sub,
	}
	s.pull = func(ctx context.Context, ref string) error {
		_, err := run(ctx, filepath.Join(tools.Bin, "flotctl"), "--address", s.Socket, "-n", Namespace,
			"pull", "-q", "--plain-http", ref)
		return err
	}
	s.daemons = func() ([]int, error) {
		names := stack.Order
		if mode == stack.OneProcess {
			names = []string{stack.ProcessName}
		}
		var roots []int
		for _, name := range names {
			pid, err := readPid(l.PidFile(name))
			if err != nil {
				return nil, fmt.Errorf("pid of %s: %w", name, err)
			}
			roots = append(roots, pid)
		}
		return withoutShims(processTree(roots), s.shim), nil
	}
	return s, nil
}

// startEventPair starts redis-server on a unix socket in dir and two eventd
// sharing it, and returns the two eventd's sockets.
func startEventPair(ctx context.Context, cl *Cleanups, tools Tools, dir string) (string, string, error) {
	evDir := filepath.Join(dir, "events")
	if err := os.MkdirAll(evDir, 0o700); err != nil {
		return "", "", err
	}
	redisSock := filepath.Join(evDir, "redis.sock")
	redis, err := startDaemon("redis-server", filepath.Join(evDir, "redis.log"), nil, tools.Redis,
		"--port", "0", "--unixsocket", redisSock, "--save", "", "--appendonly", "no", "--dir", evDir)
	if err != nil {
		return "", "", err
	}
	cl.Push(func() { redis.stop(5 * time.Second) })
	if err := redis.waitSocket(ctx, redisSock, 20*time.Second); err != nil {
		return "", "", err
	}
	var socks []string
	for _, name := range []string{"eventd-a", "eventd-b"} {
		sock := filepath.Join(evDir, name+".sock")
		d, err := startDaemon(name, filepath.Join(evDir, name+".log"), nil, filepath.Join(tools.Bin, "eventd"),
			"--address", sock, "--root", filepath.Join(evDir, name, "root"), "--state", filepath.Join(evDir, name, "state"),
			"--redis", "unix://"+redisSock)
		if err != nil {
			return "", "", err
		}
		cl.Push(func() { d.stop(10 * time.Second) })
		if err := d.waitSocket(ctx, sock, 30*time.Second); err != nil {
			return "", "", err
		}
		socks = append(socks, sock)
	}
	return socks[0], socks[1], nil
}

// startContainerd starts containerd binary on dir (root, state, sockets
// and config all inside it, CRI disabled), with shimDir first on its $PATH
// when set so it runs that runc shim.
func startContainerd(ctx context.Context, cl *Cleanups, tools Tools, key, name, short, binary, shimDir, ctrPull string, dir string) (*System, error) {
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[debug]
  address = %[4]q
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, filepath.Join(dir, "debug.sock"))
	configPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return nil, err
	}
	var env []string
	if shimDir != "" {
		env = append(env, "PATH="+shimDir+":"+os.Getenv("PATH"))
	}
	d, err := startDaemon(name, filepath.Join(dir, "containerd.log"), env, binary, "--config", configPath)
	if err != nil {
		return nil, err
	}
	cl.Push(func() { d.stop(15 * time.Second) })
	if err := d.waitSocket(ctx, sock, 60*time.Second); err != nil {
		return nil, err
	}
	version, _ := run(ctx, binary, "--version")
	s := &System{
		Key: key, Name: name, Short: short, Version: strings.TrimSpace(version), Socket: sock, Dir: dir,
		ctr: tools.Ctr, shim: "containerd-shim-runc-v2", runcRoot: filepath.Join(dir, "runc"), fifoDir: filepath.Join(dir, "fifo"),
		publishSocket: sock, subscribeSocket: sock,
	}
	s.pull = func(ctx context.Context, ref string) error {
		_, err := run(ctx, ctrPull, "--address", sock, "-n", Namespace, "images", "pull", "--plain-http", ref)
		return err
	}
	s.daemons = func() ([]int, error) {
		return withoutShims(processTree([]int{d.cmd.Process.Pid}), s.shim), nil
	}
	return s, nil
}

// shims returns the pids of the system's shims.
func (s *System) shims() []int { return processesNamed(s.shim, s.Dir+"/") }

func withoutShims(pids []int, shim string) []int {
	var out []int
	for _, pid := range pids {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if filepath.Base(exe) != shim {
			out = append(out, pid)
		}
	}
	return out
}

// freePortRange finds n consecutive free TCP ports on 127.0.0.1.
func freePortRange(n int) (int, error) {
	for attempt := 0; attempt < 100; attempt++ {
		base := 20000 + rand.IntN(30000)
		ok := true
		for p := base; p < base+n; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no %d consecutive free ports on 127.0.0.1", n)
}

func dialUnix(path string) (net.Conn, error) { return net.DialTimeout("unix", path, time.Second) }

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// serverVersion picks the server's version out of flotctl version's output
// ("flotctl V (REV)\nserver V (REV) at SOCKET").
func serverVersion(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "server" {
			return f[1]
		}
	}
	return strings.TrimSpace(out)
}
