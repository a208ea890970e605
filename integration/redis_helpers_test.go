package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// redisServer is a redis-server on a unix socket, started and killed by a
// test to make an outage.
type redisServer struct {
	t    testing.TB
	sock string
	cmd  *exec.Cmd
	done chan struct{}
}

// startRedis starts redis-server until the test ends; it is required in CI.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	requireTool(t, "redis-server")
	dir, err := os.MkdirTemp("", "flredis")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := &redisServer{t: t, sock: filepath.Join(dir, "redis.sock")}
	r.start()
	t.Cleanup(r.kill)
	return r
}

// URL is what eventd's --redis takes.
func (r *redisServer) URL() string { return "unix://" + r.sock }

// start runs redis-server and returns once it answers PING.
func (r *redisServer) start() {
	r.t.Helper()
	cmd := exec.Command("redis-server", "--port", "0", "--unixsocket", r.sock, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", filepath.Dir(r.sock))
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	r.cmd, r.done = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(r.done)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", r.sock); err == nil {
			fmt.Fprint(c, "PING\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "+PONG") {
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatal("redis-server did not answer PING within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill stops redis-server at once, as a crash would.
func (r *redisServer) kill() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}
