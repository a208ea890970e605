package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	transferapi "github.com/containerd/containerd/api/services/transfer/v1"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	flotctltransfer "github.com/flotilla/flotilla/flotctl/transfer"
	"github.com/flotilla/flotilla/integration/imagekit"
	snapshotterv1 "github.com/flotilla/flotilla/proto/snapshotter/v1"
	"github.com/flotilla/flotilla/services/discovery"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/node"
)

// The hosts of a multi-host cluster are network namespaces the test makes:
// A holds a bridge and the content tier, B and C hang off it by veth pairs.
// Every address is on a /24 that exists only inside them.
const (
	mhSubnet    = "10.77.0"
	mhRedisPort = 6379
	// Fixed ports: each host is its own network namespace.
	mhContentd     = 7000
	mhContentdMove = 7010
	mhEventd       = 7004
	mhSnapshotd    = 7002
	mhTaskd        = 7003
	// mhInterval is every daemon's discovery interval.
	mhInterval = time.Second
	// mhStall is the gateways' stall timeout: how long a backend
	// connection may answer nothing before its calls fail.
	mhStall = 2 * time.Second
	// mhMetrics is where contentd (with --pprof) and snapshotd serve
	// metrics, on every address of their host.
	mhMetrics = 9101
	// mhRegistryPort is where host A serves the registry to contentd.
	mhRegistryPort = 5000
)

type mhHost struct {
	name string // a, b, c: also the node name
	ns   string // the network namespace
	ip   string
	dir  string
}

type mhCluster struct {
	t     *testing.T
	dir   string
	certs string
	hosts map[string]*mhHost
	procs map[string]*exec.Cmd // "b/gateway"
	logs  map[string]string
}

func (h *mhHost) addr(port int) string { return fmt.Sprintf("%s:%d", h.ip, port) }

// socket is the gateway socket of the host: ctr reaches it from the root
// network namespace (a unix socket is a path, whatever the namespace).
func (h *mhHost) socket() string { return filepath.Join(h.dir, "flotilla.sock") }

func (c *mhCluster) stack(h string) *Stack { return &Stack{Socket: c.hosts[h].socket(), t: c.t} }

func mhRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// startCluster makes hosts A, B and C, certificates, Redis over TLS on A,
// contentd and eventd on A, and eventd, snapshotd, taskd and a gateway on
// B and on C, every daemon finding the others through Redis.
func startCluster(t *testing.T) *mhCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("multi-host tests need root (network namespaces) and run in CI")
		}
		t.Skip("needs root for network namespaces")
	}
	requireTool(t, "ip")
	requireTool(t, "nsenter")
	requireTool(t, "redis-server")
	requireTool(t, "ctr")
	dir, err := os.MkdirTemp("", "flmh")
	if err != nil {
		t.Fatal(err)
	}
	c := &mhCluster{t: t, dir: dir, certs: filepath.Join(dir, "certs"), hosts: map[string]*mhHost{}, procs: map[string]*exec.Cmd{}, logs: map[string]string{}}
	prefix := fmt.Sprintf("flmh%d", os.Getpid()%100000)
	for i, name := range []string{"a", "b", "c"} {
		c.hosts[name] = &mhHost{name: name, ns: prefix + name, ip: fmt.Sprintf("%s.%d", mhSubnet, i+1), dir: filepath.Join(dir, name)}
	}
	// Cleanup runs even when a step below fails: daemons and shims first,
	// then the namespaces, which take their veths with them.
	t.Cleanup(func() {
		for key, cmd := range c.procs {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			if t.Failed() {
				t.Logf("--- %s log:\n%s", key, lastLines(readFile(c.logs[key]), 25))
			}
		}
		reapLeftovers(t, dir)
		for _, h := range c.hosts {
			exec.Command("ip", "netns", "del", h.ns).Run()
		}
	})

	a := c.hosts["a"]
	mhRun(t, "ip", "netns", "add", a.ns)
	mhRun(t, "ip", "-n", a.ns, "link", "set", "lo", "up")
	mhRun(t, "ip", "-n", a.ns, "link", "add", "br0", "type", "bridge")
	mhRun(t, "ip", "-n", a.ns, "addr", "add", a.ip+"/24", "dev", "br0")
	mhRun(t, "ip", "-n", a.ns, "link", "set", "br0", "up")
	for _, name := range []string{"b", "c"} {
		h := c.hosts[name]
		mhRun(t, "ip", "netns", "add", h.ns)
		mhRun(t, "ip", "-n", h.ns, "link", "set", "lo", "up")
		// Both ends made right in their namespaces: no traffic outside them.
		mhRun(t, "ip", "link", "add", "eth0", "netns", h.ns, "type", "veth", "peer", "name", "to-"+name, "netns", a.ns)
		mhRun(t, "ip", "-n", h.ns, "addr", "add", h.ip+"/24", "dev", "eth0")
		mhRun(t, "ip", "-n", h.ns, "link", "set", "eth0", "up")
		mhRun(t, "ip", "-n", a.ns, "link", "set", "to-"+name, "master", "br0", "up")
	}

	flotctl := filepath.Join(binDir, "flotctl")
	mhRun(t, flotctl, "certs", "ca", "--dir", c.certs)
	for _, h := range c.hosts {
		args := []string{flotctl, "certs", "issue", "--dir", c.certs, "--role", "service", "--host", h.ip}
		if h.name != "a" {
			// The nodes' services (their gateways name the node in the
			// calls they relay to contentd).
			args = append(args, "--node", h.name)
		}
		mhRun(t, append(args, h.name)...)
	}
	mhRun(t, flotctl, "certs", "issue", "--dir", c.certs, "--role", "admin", "operator")
	mhRun(t, flotctl, "certs", "issue", "--dir", c.certs, "--role", "client", "user")

	c.start("a", "redis", "/usr/bin/redis-server", "--port", "0", "--bind", a.ip,
		"--tls-port", fmt.Sprint(mhRedisPort), "--tls-auth-clients", "yes",
		// Clients prove who they are with their certificates, not a password.
		"--protected-mode", "no",
		"--tls-cert-file", c.cert("a"), "--tls-key-file", c.key("a"), "--tls-ca-cert-file", c.ca(),
		"--save", "", "--appendonly", "no", "--dir", a.dir)
	c.daemon("a", "eventd", "--address", "tcp://"+a.addr(mhEventd), "--redis", c.redisURL())
	// contentd logs every call as it ends (debug), so that a test sees
	// when one is over.
	c.daemon("a", "contentd", "--address", "tcp://"+a.addr(mhContentd), "--eventd", "tcp://"+a.addr(mhEventd), "--log-level", "debug",
		"--metrics-address", fmt.Sprintf("0.0.0.0:%d", mhMetrics), "--pprof")
	for _, name := range []string{"b", "c"} {
		h := c.hosts[name]
		eventd := filepath.Join(h.dir, "eventd.sock")
		c.daemon(name, "eventd", "--address", eventd, "--redis", c.redisURL())
		c.daemon(name, "snapshotd", "--address", "tcp://"+h.addr(mhSnapshotd), "--eventd", eventd, "--contentd", "discover://contentd",
			"--metrics-address", fmt.Sprintf("0.0.0.0:%d", mhMetrics))
		c.daemon(name, "taskd", "--address", "tcp://"+h.addr(mhTaskd), "--eventd", eventd, "--contentd", "discover://contentd",
			"--snapshotd", "discover://snapshotd?node="+name)
		c.daemon(name, "gateway", "--address", h.socket(), "--eventd", eventd, "--contentd", "discover://contentd",
			"--snapshotd", "discover://snapshotd?node="+name, "--taskd", "discover://taskd?node="+name,
			"--stall-timeout", mhStall.String())
	}
	for _, name := range []string{"b", "c"} {
		c.waitCtr(t, name)
	}
	return c
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func (c *mhCluster) ca() string              { return filepath.Join(c.certs, "ca.pem") }
func (c *mhCluster) cert(name string) string { return filepath.Join(c.certs, name+".pem") }
func (c *mhCluster) key(name string) string  { return filepath.Join(c.certs, name+"-key.pem") }
func (c *mhCluster) redisURL() string {
	return fmt.Sprintf("rediss://%s/0", c.hosts["a"].addr(mhRedisPort))
}

// start runs a program on host h, inside its network namespace only:
// nsenter --net, unlike ip netns exec, leaves the mount namespace (and its
// /sys/fs/cgroup, which runc needs) as it is.
func (c *mhCluster) start(h, name, bin string, args ...string) *exec.Cmd {
	c.t.Helper()
	host := c.hosts[h]
	key := h + "/" + name
	if err := os.MkdirAll(host.dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	logPath := filepath.Join(c.dir, h+"-"+name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + host.ns, "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "FLOTILLA_ROOT="+host.dir, "FLOTILLA_STATE="+host.dir)
	cmd.Dir = host.dir
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", key, err)
	}
	c.procs[key], c.logs[key] = cmd, logPath
	return cmd
}

// daemon starts Flotilla daemon name on host h with the cluster's
// certificates, node name and registry.
func (c *mhCluster) daemon(h, name string, args ...string) *exec.Cmd {
	c.t.Helper()
	host := c.hosts[h]
	common := []string{
		"--root", filepath.Join(host.dir, name), "--state", filepath.Join(host.dir, name+"-state"),
		"--tls-ca", c.ca(), "--tls-cert", c.cert(h), "--tls-key", c.key(h),
		"--node", h, "--discovery", c.redisURL(), "--discovery-interval", mhInterval.String(),
	}
	return c.start(h, name, filepath.Join(binDir, name), append(common, args...)...)
}

// waitCtr waits until ctr, through host h's gateway, reaches the services
// behind each of commands (default: contentd, by namespaces ls).
func (c *mhCluster) waitCtr(t *testing.T, h string, commands ...[]string) {
	t.Helper()
	if len(commands) == 0 {
		commands = [][]string{{"namespaces", "ls"}}
	}
	s := &Stack{Socket: c.hosts[h].socket(), t: t}
	until(t, time.Minute, fmt.Sprintf("ctr through host %s's gateway reaching its services", h), func() (bool, string) {
		for _, args := range commands {
			if out, err := s.Ctr("default", args...); err != nil {
				return false, fmt.Sprintf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		return true, ""
	})
}

// inHost runs fn on an OS thread moved into host h's network namespace, so
// that the sockets fn makes are h's (a socket stays in the namespace it was
// made in), and moves the thread back afterwards. The thread is not left to
// die in the namespace: a child started from it earlier (the registry) has
// a parent-death signal bound to it.
func (c *mhCluster) inHost(h string, fn func()) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer unix.Close(home)
		target, err := unix.Open("/run/netns/"+c.hosts[h].ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		fn()
		if unix.Setns(home, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and dies with this goroutine
		done <- nil
	}()
	return <-done
}

// dialIn connects to addr from host h.
func (c *mhCluster) dialIn(h string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		var derr error
		if err := c.inHost(h, func() {
			var d net.Dialer
			conn, derr = d.DialContext(ctx, "tcp", strings.TrimPrefix(addr, "passthrough:///"))
		}); err != nil {
			return nil, err
		}
		return conn, derr
	}
}

// listenIn listens on addr in host h.
func (c *mhCluster) listenIn(h, addr string) (net.Listener, error) {
	var l net.Listener
	var lerr error
	if err := c.inHost(h, func() { l, lerr = net.Listen("tcp", addr) }); err != nil {
		return nil, err
	}
	return l, lerr
}

func (c *mhCluster) tlsConfig(name, serverName string) *tls.Config {
	c.t.Helper()
	pem, err := os.ReadFile(c.ca())
	if err != nil {
		c.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: pool, ServerName: serverName, NextProtos: []string{"h2"}}
	if name != "" {
		cert, err := tls.LoadX509KeyPair(c.cert(name), c.key(name))
		if err != nil {
			c.t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// TestMultiHost runs one cluster of three hosts and shows, on it, what
// components on different hosts must do.
func TestMultiHost(t *testing.T) {
	c := startCluster(t)
	b, cc := c.stack("b"), c.stack("c")

	reg, err := imagekit.RunRegistry(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Stop() })
	img, err := imagekit.BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	ref := reg.Addr + "/multihost/busybox:1"
	pctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := img.Push(pctx, ref); err != nil {
		t.Fatal(err)
	}
	const ns = "mh"

	t.Run("pulled on B, run on C without fetching from the registry", func(t *testing.T) {
		b, cc := &Stack{Socket: b.Socket, t: t}, &Stack{Socket: cc.Socket, t: t}
		b.MustCtr(ns, "images", "pull", "--plain-http", ref)
		before, err := reg.AccessLog()
		if err != nil {
			t.Fatal(err)
		}
		out := cc.MustCtr(ns, "run", "--rm", ref, "on-c", "echo", "hello from C")
		if strings.TrimSpace(out) != "hello from C" {
			t.Fatalf("ctr run on C printed %q", out)
		}
		after, err := reg.AccessLog()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range after[len(before):] {
			if strings.Contains(l, "/blobs/") {
				t.Errorf("the registry served a blob after the pull on B: %s", l)
			}
		}
	})

	t.Run("ctr events on C shows the exit of a task on B", func(t *testing.T) {
		b, cc := &Stack{Socket: b.Socket, t: t}, &Stack{Socket: cc.Socket, t: t}
		lines := subscribe(t, cc)
		b.MustCtr(ns, "run", "--rm", ref, "on-b", "true")
		deadline := time.After(30 * time.Second)
		for {
			select {
			case ev, ok := <-lines:
				if !ok {
					t.Fatal("ctr events on C exited")
				}
				if ev.Namespace == ns && ev.Topic == "/tasks/exit" && strings.Contains(ev.Event, "on-b") {
					return
				}
			case <-deadline:
				t.Fatal("no /tasks/exit of container on-b reached ctr events on C")
			}
		}
	})

	t.Run("every TCP port refuses peers without a valid certificate", func(t *testing.T) {
		type port struct{ host, name, addr string }
		ports := []port{
			{"a", "redis", c.hosts["a"].addr(mhRedisPort)},
			{"a", "contentd", c.hosts["a"].addr(mhContentd)},
			{"a", "eventd", c.hosts["a"].addr(mhEventd)},
		}
		for _, h := range []string{"b", "c"} {
			ports = append(ports, port{h, "snapshotd", c.hosts[h].addr(mhSnapshotd)}, port{h, "taskd", c.hosts[h].addr(mhTaskd)})
		}
		otherCA := filepath.Join(c.dir, "other-ca")
		mhRun(t, filepath.Join(binDir, "flotctl"), "certs", "ca", "--dir", otherCA)
		mhRun(t, filepath.Join(binDir, "flotctl"), "certs", "issue", "--dir", otherCA, "--role", "admin", "intruder")
		intruder, err := tls.LoadX509KeyPair(filepath.Join(otherCA, "intruder.pem"), filepath.Join(otherCA, "intruder-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ports {
			host, _, _ := net.SplitHostPort(p.addr)
			dial := c.dialIn(p.host)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			// Plaintext: whatever is sent, nothing readable comes back.
			if conn, err := dial(ctx, p.addr); err != nil {
				t.Errorf("%s on %s: %v", p.name, p.addr, err)
			} else {
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(conn, "PING\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
				reply, _ := io.ReadAll(conn)
				conn.Close()
				if strings.Contains(string(reply), "PONG") || strings.Contains(string(reply), "HTTP/") || strings.Contains(string(reply), "PRI") {
					t.Errorf("%s on %s answered plaintext: %q", p.name, p.addr, reply)
				}
			}
			for _, tc := range []struct {
				what string
				cfg  *tls.Config
			}{
				{"no client certificate", c.tlsConfig("", host)},
				{"a certificate of another CA", func() *tls.Config {
					cfg := c.tlsConfig("", host)
					cfg.Certificates = []tls.Certificate{intruder}
					return cfg
				}()},
			} {
				if p.name == "redis" {
					tc.cfg.NextProtos = nil
				}
				if answered(ctx, dial, p.addr, tc.cfg) {
					t.Errorf("%s on %s served a peer with %s", p.name, p.addr, tc.what)
				}
			}
			if p.name != "redis" {
				// The same port serves a peer with a valid certificate.
				if err := healthCheck(ctx, dial, p.addr, c.tlsConfig("user", host)); err != nil {
					t.Errorf("%s on %s refused a valid client certificate: %v", p.name, p.addr, err)
				}
			}
			cancel()
			if p.name != "redis" && !strings.Contains(readFile(c.logs[p.host+"/"+p.name]), "refused a TCP peer") {
				t.Errorf("%s on host %s did not log the refused peers", p.name, p.host)
			}
		}
	})

	t.Run("the admin API refuses a certificate without the admin role", func(t *testing.T) {
		bHost := c.hosts["b"]
		call := func(who string) error {
			conn, err := grpc.NewClient("passthrough:///"+bHost.addr(mhSnapshotd), grpc.WithContextDialer(c.dialIn("b")),
				grpc.WithTransportCredentials(credentials.NewTLS(c.tlsConfig(who, bHost.ip))))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = snapshotterv1.NewSnapshottersClient(conn).Add(ctx, &snapshotterv1.AddSnapshotterRequest{Name: "evil", Path: "/nonexistent/snapshotter-evil"})
			return err
		}
		for _, who := range []string{"user", "b"} {
			if err := call(who); status.Code(err) != codes.PermissionDenied {
				t.Errorf("Add with the %s certificate = %v, want PermissionDenied", who, err)
			}
		}
		// An admin is let through to snapshotd itself, which then judges
		// the request: it runs no program outside its plugin directory.
		if err := call("operator"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "outside the plugin directory") {
			t.Errorf("Add with the admin certificate = %v, want snapshotd's own answer: InvalidArgument, outside the plugin directory", err)
		}
	})

	t.Run("only a node's own services have work done on it", func(t *testing.T) {
		// contentd unpacks a pull on the node its call names: a client, or
		// another node's service, calling contentd directly may not name C.
		aHost := c.hosts["a"]
		pull := func(who string) error {
			conn, err := grpc.NewClient("passthrough:///"+aHost.addr(mhContentd), grpc.WithContextDialer(c.dialIn("b")),
				grpc.WithTransportCredentials(credentials.NewTLS(c.tlsConfig(who, aHost.ip))))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			ctx = metadata.AppendToOutgoingContext(ctx, namespace.MetadataKey, "mh-node", node.MetadataKey, "c")
			tc := &flotctltransfer.Client{Transfer: transferapi.NewTransferClient(conn), Streaming: streamingapi.NewStreamingClient(conn)}
			// Nothing serves this registry: a call let through fails there.
			return tc.Pull(ctx, flotctltransfer.Registry{Reference: "127.0.0.1:9/nothing:1", PlainHTTP: true},
				flotctltransfer.Store{Name: "127.0.0.1:9/nothing:1", Platforms: []ocispec.Platform{platforms.DefaultSpec()}, Unpack: "overlayfs"}, nil)
		}
		for _, who := range []string{"user", "b", "operator"} {
			if err := pull(who); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `node "c"`) {
				t.Errorf("a pull naming node c with the %s certificate = %v, want PermissionDenied naming the node", who, err)
			}
		}
		if err := pull("c"); err == nil || status.Code(err) == codes.PermissionDenied {
			t.Errorf("a pull naming node c with C's certificate = %v, want it let through to the registry (and failing there)", err)
		}
	})

	t.Run("a namespace is not removed while a container in it exists on C", func(t *testing.T) {
		b, cc := &Stack{Socket: b.Socket, t: t}, &Stack{Socket: cc.Socket, t: t}
		const held = "held-on-c"
		cc.MustCtr(held, "images", "pull", "--plain-http", ref)
		cc.MustCtr(held, "containers", "create", ref, "waiting")
		out, err := b.Ctr(held, "namespaces", "rm", held)
		if err == nil || !strings.Contains(out, "containers") {
			t.Fatalf("namespaces rm through B while C holds a container = %v\n%s", err, out)
		}
		cc.MustCtr(held, "containers", "rm", "waiting")
	})

	t.Run("metrics are open; profiles only when asked for, and only to the host itself", func(t *testing.T) {
		get := func(from, url string) int {
			t.Helper()
			dial := c.dialIn(from)
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) }}}
			resp, err := client.Get(url)
			if err != nil {
				t.Fatalf("GET %s from host %s: %v", url, from, err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		contentd := fmt.Sprintf("http://%s:%d", c.hosts["a"].ip, mhMetrics)
		for _, tc := range []struct {
			what, from, url string
			want            int
		}{
			{"contentd's metrics from another host", "c", contentd + "/metrics", http.StatusOK},
			{"contentd's profiles (--pprof) from another host", "c", contentd + "/debug/pprof/", http.StatusForbidden},
			{"contentd's profiles from its own host, not over loopback", "a", contentd + "/debug/pprof/", http.StatusForbidden},
			{"contentd's profiles from its own host over loopback", "a", fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/", mhMetrics), http.StatusOK},
			{"snapshotd's metrics from another host", "a", fmt.Sprintf("http://%s:%d/metrics", c.hosts["b"].ip, mhMetrics), http.StatusOK},
			{"snapshotd's profiles (no --pprof) over loopback", "b", fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/", mhMetrics), http.StatusNotFound},
		} {
			if got := get(tc.from, tc.url); got != tc.want {
				t.Errorf("%s: GET %s from host %s = %d, want %d", tc.what, tc.url, tc.from, got, tc.want)
			}
		}
	})

	t.Run("flotctl stack status on B shows every node's services", func(t *testing.T) {
		out, err := exec.Command(filepath.Join(binDir, "flotctl"), "--address", c.hosts["b"].socket(), "stack", "status").CombinedOutput()
		if err != nil {
			t.Fatalf("flotctl stack status: %v\n%s", err, out)
		}
		// Every daemon is built with flotctl's version.
		v, _ := exec.Command(filepath.Join(binDir, "flotctl"), "version").Output()
		version := strings.Fields(string(v) + " ? ?")[1]
		_, cluster, ok := strings.Cut(string(out), "CLUSTER")
		if !ok {
			t.Fatalf("no cluster in stack status:\n%s", out)
		}
		// What B can ask is asked; a unix socket on C only shows that it
		// registered.
		want := []struct{ node, service, address, health string }{
			{"a", "contentd", c.hosts["a"].addr(mhContentd), "SERVING"},
			{"a", "eventd", c.hosts["a"].addr(mhEventd), "SERVING"},
			{"b", "eventd", filepath.Join(c.hosts["b"].dir, "eventd.sock"), "SERVING"},
			{"b", "gateway", c.hosts["b"].socket(), "SERVING"},
			{"b", "snapshotd", c.hosts["b"].addr(mhSnapshotd), "SERVING"},
			{"b", "taskd", c.hosts["b"].addr(mhTaskd), "SERVING"},
			{"c", "eventd", filepath.Join(c.hosts["c"].dir, "eventd.sock"), "REGISTERED"},
			{"c", "gateway", c.hosts["c"].socket(), "REGISTERED"},
			{"c", "snapshotd", c.hosts["c"].addr(mhSnapshotd), "SERVING"},
			{"c", "taskd", c.hosts["c"].addr(mhTaskd), "SERVING"},
		}
		for _, w := range want {
			found := false
			for _, line := range strings.Split(cluster, "\n") {
				f := strings.Fields(line)
				if len(f) >= 5 && f[0] == w.node && f[1] == w.service && f[2] == w.address {
					found = true
					if !strings.HasPrefix(f[3], w.health) || !strings.Contains(line, " "+version+" ") {
						t.Errorf("%s on %s: %q, want %s with its version", w.service, w.node, line, w.health)
					}
				}
			}
			if !found {
				t.Errorf("no %s of node %s at %s in stack status:\n%s", w.service, w.node, w.address, cluster)
			}
		}
	})

	t.Run("contentd moved to a new address is used again without restarts", func(t *testing.T) {
		pids := map[string]int{}
		for key, cmd := range c.procs {
			pids[key] = cmd.Process.Pid
		}
		old := c.procs["a/contentd"]
		old.Process.Signal(syscall.SIGTERM)
		old.Wait()
		a := c.hosts["a"]
		c.daemon("a", "contentd", "--address", "tcp://"+a.addr(mhContentdMove), "--eventd", "tcp://"+a.addr(mhEventd))
		for _, h := range []string{"b", "c"} {
			c.waitCtr(t, h)
			if out := (&Stack{Socket: c.hosts[h].socket(), t: t}).MustCtr(ns, "images", "ls", "-q"); !strings.Contains(out, ref) {
				t.Errorf("images through %s after contentd moved: %q", h, out)
			}
		}
		for key, pid := range pids {
			if key != "a/contentd" && c.procs[key].Process.Pid != pid {
				t.Errorf("%s was restarted", key)
			}
		}
	})
}

// answered reports whether a gRPC health check over TLS with cfg gets an
// answer from addr (false when the TLS handshake or the call fails).
func answered(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addr string, cfg *tls.Config) bool {
	raw, err := dial(ctx, addr)
	if err != nil {
		return false
	}
	conn := tls.Client(raw, cfg)
	defer conn.Close()
	if err := conn.HandshakeContext(ctx); err != nil {
		return false
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	// TLS 1.3: the server checks the client's certificate after the
	// client's side of the handshake is done; its verdict arrives on the
	// first read.
	io.WriteString(conn, "PING\r\n")
	buf := make([]byte, 64)
	n, err := bufio.NewReader(conn).Read(buf)
	return err == nil && n > 0
}

func healthCheck(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addr string, cfg *tls.Config) error {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithContextDialer(dial), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// TestMultiHostLinkCutDuringAPull cuts the link between node B and the
// content tier on A while a server-side pull on B is downloading: B's pull
// fails within the gateway's stall timeout saying contentd does not answer,
// contentd keeps what it stored, and once the link is back the same pull on
// B completes, asking the registry only for the rest of the layer.
//
// The registry serves contentd from host A, so the cut is B losing its
// content tier, not contentd losing the registry. To have the cut fall
// mid-download whatever the machine's speed, the registry's front on A
// holds the layer halfway until contentd lets the request go.
func TestMultiHostLinkCutDuringAPull(t *testing.T) {
	ctr2Bin(t)
	c := startCluster(t)
	a, b := c.hosts["a"], c.stack("b")
	reg := runRegistry(t)
	p := pushImage(t, reg.Addr, "large", func() (*imagekit.Image, error) {
		return imagekit.BuildLarge(imagekit.WithSize(32<<20), imagekit.WithTempDir(os.TempDir()))
	})
	layer := p.img.Layers[0].Descriptor

	// The registry on A: a relay on A's address to the test's registry,
	// whose access log shows what contentd asked for.
	// The layer may come in several ranged GETs: the half is counted over
	// all of them.
	hold := &halfwayHold{left: layer.Size / 2, halfway: make(chan struct{}), dropped: make(chan struct{})}
	halfway, dropped := hold.halfway, hold.dropped
	target, _ := url.Parse("http://" + reg.Addr)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && strings.HasSuffix(resp.Request.URL.Path, "/blobs/"+layer.Digest.String()) {
			select {
			case <-halfway: // the pull after the cut passes
			default:
				resp.Body = &holdHalfway{ReadCloser: resp.Body, hold: hold, ctx: resp.Request.Context()}
			}
		}
		return nil
	}
	l, err := c.listenIn("a", a.addr(mhRegistryPort))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rp}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	ref := a.addr(mhRegistryPort) + "/large:1"
	const ns = "linkcut"

	pullOnB := func() *exec.Cmd {
		return exec.Command(ctr2Bin(t), "--address", b.Socket, "--namespace", ns, "images", "pull", "--plain-http", ref)
	}
	var out strings.Builder
	pull := pullOnB()
	pull.Stdout, pull.Stderr = &out, &out
	if err := pull.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- pull.Wait() }()
	select {
	case <-halfway:
	case err := <-exited:
		t.Fatalf("the pull on B ended before half of the layer came: %v\n%s", err, out.String())
	case <-time.After(2 * time.Minute):
		t.Fatal("contentd never fetched half of the layer")
	}

	// The cable between A's switch and B is pulled: B's packets go
	// nowhere, nothing resets B's connections.
	cut := []string{"ip", "-n", a.ns, "link", "set", "to-b", "down"}
	mhRun(t, cut...)
	t.Cleanup(func() { exec.Command("ip", "-n", a.ns, "link", "set", "to-b", "up").Run() })
	select {
	case err := <-exited:
		if err == nil {
			t.Fatalf("the pull on B succeeded with its link to the content tier cut:\n%s", out.String())
		}
		if msg := out.String(); !strings.Contains(msg, "contentd") || !strings.Contains(msg, "no answer for "+mhStall.String()) {
			t.Errorf("the pull on B failed without saying contentd stopped answering:\n%s", lastLines(msg, 5))
		}
	case <-time.After(2 * time.Minute):
		// Without the gateway's stall timeout it would wait for TCP to
		// give up, a quarter of an hour.
		t.Fatal("the pull on B did not fail with its link to the content tier cut")
	}

	mhRun(t, "ip", "-n", a.ns, "link", "set", "to-b", "up")
	// contentd learns its caller went once B's connection closes across
	// the link: the pull ends, and the download with it.
	select {
	case <-dropped:
	case <-time.After(2 * time.Minute):
		t.Fatal("contentd kept downloading for a pull whose caller was gone")
	}
	// Its pull is over once contentd logs the Transfer call's end (the
	// blobs it committed are removed by then; the ingest stays).
	c.waitLog(t, "a/contentd", "Transfer/Transfer", "code=")
	c.waitRegistered(t, "snapshotd", "b")
	c.waitCtr(t, "b")

	active := b.MustCtr2(ns, "content", "active")
	if !strings.Contains(active, layer.Digest.Encoded()) {
		t.Errorf("contentd kept no ingest of %s to resume:\n%s", layer.Digest, active)
	}
	_, ranged0 := blobFetches(t, reg)
	sent0 := blobBytes(t, reg)
	if out, err := pullOnB().CombinedOutput(); err != nil {
		t.Fatalf("the same pull on B after the link came back: %v\n%s", err, out)
	}
	// Only the rest of the layer, with ranged GETs.
	_, ranged := blobFetches(t, reg)
	if sent := blobBytes(t, reg)[layer.Digest] - sent0[layer.Digest]; ranged[layer.Digest] == ranged0[layer.Digest] || sent >= layer.Size {
		lines, _ := reg.AccessLog()
		t.Errorf("the pull after the link came back fetched %d of the %d bytes of %s, want only the rest with ranged GETs; registry log:\n%s",
			sent, layer.Size, layer.Digest, strings.Join(lines, "\n"))
	}
	line := checkLine(b.MustCtr2(ns, "images", "check"), ref)
	if f := strings.Fields(line); len(f) < 4 || f[3] != "complete" {
		t.Errorf("images check on B: %q, want complete", line)
	}
}

// halfwayHold is what the bodies of one blob pass before they hold: left
// bytes over all of them. The body that reaches it closes halfway, and
// dropped once its request is cancelled.
type halfwayHold struct {
	mu               sync.Mutex
	left             int64
	once             sync.Once
	halfway, dropped chan struct{}
}

// holdHalfway is one body of the held blob: past the hold's bytes it sends
// nothing until its request is cancelled.
type holdHalfway struct {
	io.ReadCloser
	hold *halfwayHold
	ctx  context.Context
}

func (h *holdHalfway) Read(p []byte) (int, error) {
	s := h.hold
	s.mu.Lock()
	left := s.left
	s.mu.Unlock()
	if left <= 0 {
		s.once.Do(func() {
			close(s.halfway)
			go func() {
				<-h.ctx.Done()
				close(s.dropped)
			}()
		})
		<-h.ctx.Done()
		return 0, h.ctx.Err()
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := h.ReadCloser.Read(p)
	s.mu.Lock()
	s.left -= int64(n)
	s.mu.Unlock()
	return n, err
}

// waitLog waits until the log of process key holds a line containing
// every one of words.
func (c *mhCluster) waitLog(t *testing.T, key string, words ...string) {
	t.Helper()
	until(t, time.Minute, fmt.Sprintf("%s logging %q", key, words), func() (bool, string) {
		log := readFile(c.logs[key])
		for _, line := range strings.Split(log, "\n") {
			if !slices.ContainsFunc(words, func(w string) bool { return !strings.Contains(line, w) }) {
				return true, ""
			}
		}
		return false, lastLines(log, 20)
	})
}

// waitRegistered waits until the registry on A lists service on node.
func (c *mhCluster) waitRegistered(t *testing.T, service, node string) {
	t.Helper()
	a := c.hosts["a"]
	until(t, time.Minute, fmt.Sprintf("%s of node %s registering again", service, node), func() (bool, string) {
		out, err := exec.Command("nsenter", "--net=/run/netns/"+a.ns, "--", "redis-cli", "--tls",
			"--cacert", c.ca(), "--cert", c.cert("operator"), "--key", c.key("operator"),
			"-h", a.ip, "-p", fmt.Sprint(mhRedisPort), "--scan", "--pattern", discovery.KeyPrefix+service+":"+node+"-*").CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) != "", fmt.Sprintf("%v\n%s", err, out)
	})
}
