package integration

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"go.yaml.in/yaml/v3"

	"github.com/flotilla/flotilla/flotctl/stack"
)

// TestCtrVersionShowsFlotilla checks that the version answered to
// containerd's clients is a semver of the containerd API level Flotilla
// serves (2.0.x since the Transfer API works end to end), with Flotilla's
// own version and revision in its build
// metadata, and the revision in full beside it.
func TestCtrVersionShowsFlotilla(t *testing.T) {
	s := startStack(t)
	out := s.MustCtr("default", "version")
	server := out[strings.Index(out, "Server:"):]
	want, err := exec.Command(filepath.Join(binDir, "flotctl"), "--address", s.Socket, "version").Output()
	if err != nil {
		t.Fatalf("flotctl version: %v\n%s", err, want)
	}
	// flotctl prints "flotctl VERSION (REVISION)", built with the same flags as the gateway.
	m := regexp.MustCompile(`flotctl (\S+) \((\S+)\)`).FindStringSubmatch(string(want))
	if m == nil {
		t.Fatalf("flotctl version = %q", want)
	}
	v := regexp.MustCompile(`(?m)^\s*Version:\s+(\S+)$`).FindStringSubmatch(server)
	if v == nil {
		t.Fatalf("ctr version shows no server version:\n%s", server)
	}
	// SemVer 2.0.0 with build metadata, as nerdctl's parser reads it.
	semver := regexp.MustCompile(`^2\.0\.(0|[1-9]\d*)\+flotilla(\.[0-9A-Za-z-]+)+$`)
	if !semver.MatchString(v[1]) {
		t.Errorf("server version %q is not 2.0.x+flotilla.<version>.<revision>", v[1])
	}
	short := m[2]
	if len(short) > 12 {
		short = short[:12]
	}
	if !strings.HasSuffix(v[1], "+flotilla."+m[1]+"."+short) {
		t.Errorf("server version %q does not carry flotctl's version %s and revision %s", v[1], m[1], short)
	}
	for _, line := range []string{"Revision: " + m[2], "UUID: "} {
		if !strings.Contains(server, line) {
			t.Errorf("ctr version's server part lacks %q:\n%s", line, server)
		}
	}
	if !strings.Contains(string(want), v[1]) {
		t.Errorf("flotctl version does not show the server's version %s:\n%s", v[1], want)
	}
}

func TestCtrNamespacesThroughGateway(t *testing.T) {
	s := startStack(t)
	t.Run("create, label, ls and rm", func(t *testing.T) {
		s.MustCtr("default", "namespaces", "create", "team-a", "owner=ops")
		s.MustCtr("default", "namespaces", "label", "team-a", "tier=gold")
		out := s.MustCtr("default", "namespaces", "ls")
		if !regexp.MustCompile(`(?m)^team-a\s+owner=ops,tier=gold\s*$`).MatchString(out) {
			t.Fatalf("ls does not show team-a with both labels:\n%s", out)
		}
		s.MustCtr("default", "namespaces", "label", "team-a", "tier=")
		out = s.MustCtr("default", "namespaces", "ls")
		if !regexp.MustCompile(`(?m)^team-a\s+owner=ops\s*$`).MatchString(out) {
			t.Fatalf("an empty label value should remove the label:\n%s", out)
		}
		s.MustCtr("default", "namespaces", "rm", "team-a")
		if out := s.MustCtr("default", "namespaces", "ls", "-q"); strings.Contains(out, "team-a") {
			t.Fatalf("team-a still listed after rm:\n%s", out)
		}
	})
	t.Run("creating an existing namespace is refused", func(t *testing.T) {
		s.MustCtr("default", "namespaces", "create", "twice")
		out, err := s.Ctr("default", "namespaces", "create", "twice")
		if err == nil || !strings.Contains(out, "already exists") {
			t.Fatalf("second create: err=%v out=%s", err, out)
		}
	})
	t.Run("removing a missing namespace is NotFound", func(t *testing.T) {
		// ctr rm forgives NotFound, so ask the API directly.
		_, err := namespacesapi.NewNamespacesClient(s.Conn()).Delete(context.Background(), &namespacesapi.DeleteNamespaceRequest{Name: "never-made"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("Delete of a missing namespace = %v, want NotFound", err)
		}
	})
	t.Run("invalid names are InvalidArgument", func(t *testing.T) {
		for _, name := range []string{"-bad", strings.Repeat("a", 77)} {
			out, err := s.Ctr("default", "namespaces", "create", "--", name)
			if err == nil || !strings.Contains(out, "invalid argument") {
				t.Fatalf("create %q: err=%v out=%s", name, err, out)
			}
		}
		out := s.MustCtr("default", "namespaces", "ls", "-q")
		if strings.Contains(out, "bad") || strings.Contains(out, "aaaa") {
			t.Fatalf("an invalid namespace was created:\n%s", out)
		}
	})
	t.Run("an invalid namespace in the call's metadata is InvalidArgument", func(t *testing.T) {
		out, err := s.Ctr("-bad", "images", "ls")
		if err == nil || !strings.Contains(out, "invalid argument") {
			t.Fatalf("call in namespace -bad: err=%v out=%s", err, out)
		}
	})
}

// scrape returns the value of the first sample of metric whose labels
// contain every one of labels, or -1 when there is none.
func scrape(t *testing.T, addr, metric string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("metrics content type %q", ct)
	}
	body, _ := io.ReadAll(resp.Body)
next:
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue next
			}
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		return v
	}
	return -1
}

func TestMetricsCountCalls(t *testing.T) {
	s := startStack(t)
	list := []string{`grpc_method="List"`, `grpc_service="containerd.services.namespaces.v1.Namespaces"`, `grpc_code="OK"`}
	gateway, contentd := s.Service("gateway").MetricsAddress, s.Service("contentd").MetricsAddress
	gw0, cd0 := scrape(t, gateway, "grpc_server_handled_total", list...), scrape(t, contentd, "grpc_server_handled_total", list...)
	for i := 0; i < 3; i++ {
		s.MustCtr("default", "namespaces", "ls")
	}
	if gw1 := scrape(t, gateway, "grpc_server_handled_total", list...); gw1-max(gw0, 0) != 3 {
		t.Errorf("gateway's Namespaces/List counter went from %v to %v, want +3", gw0, gw1)
	}
	if cd1 := scrape(t, contentd, "grpc_server_handled_total", list...); cd1-max(cd0, 0) != 3 {
		t.Errorf("contentd's Namespaces/List counter went from %v to %v, want +3", cd0, cd1)
	}
	if v := scrape(t, gateway, "grpc_server_handling_seconds_count", `grpc_method="List"`); v < 3 {
		t.Errorf("gateway latency histogram count = %v, want >= 3", v)
	}
	for _, name := range stack.Order {
		addr := s.Service(name).MetricsAddress
		if v := scrape(t, addr, "grpc_server_handled_total", `grpc_service="grpc.health.v1.Health"`, `grpc_code="OK"`); v < 1 {
			t.Errorf("%s: health checks not counted (%v)", name, v)
		}
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, m := range []string{"go_goroutines ", "process_resident_memory_bytes "} {
			if !strings.Contains(string(body), m) {
				t.Errorf("%s metrics lack %s", name, m)
			}
		}
	}
}

func TestGatewayNamesAnUnavailableBackendAndRecovers(t *testing.T) {
	skipInOneProcess(t, "the gateway and contentd live and die together")
	s := startStack(t)
	s.MustCtr("default", "namespaces", "create", "before")
	gatewayPid := s.Pid("gateway")

	s.Kill9("contentd")
	start := time.Now()
	out, err := s.Ctr("default", "namespaces", "ls")
	took := time.Since(start)
	if err == nil {
		t.Fatalf("namespaces ls succeeded with contentd dead:\n%s", out)
	}
	if !strings.Contains(out, "contentd") || !strings.Contains(out, "unavailable") {
		t.Fatalf("error does not name contentd as unavailable:\n%s", out)
	}
	// ctr itself takes some tens of milliseconds to start; 2 s is the bound.
	if took > 2*time.Second {
		t.Fatalf("failing took %s, want within 2s", took)
	}
	t.Logf("namespaces ls with contentd down failed in %s: %s", took, strings.TrimSpace(out))

	s.Up() // starts only what is not running: contentd
	out = s.MustCtr("default", "namespaces", "ls", "-q")
	if !strings.Contains(out, "before") {
		t.Fatalf("namespace created before the restart is gone:\n%s", out)
	}
	if pid := s.Pid("gateway"); pid != gatewayPid {
		t.Fatalf("gateway was restarted (pid %d -> %d)", gatewayPid, pid)
	}
}

func TestStackStatusShowsEveryService(t *testing.T) {
	s := startStack(t)
	out, err := exec.Command(filepath.Join(binDir, "flotctl"), "--address", s.Socket, "stack", "status").CombinedOutput()
	if err != nil {
		t.Fatalf("flotctl stack status: %v\n%s", err, out)
	}
	for _, svc := range s.Layout.Services() {
		re := regexp.MustCompile(`(?m)^` + svc.Name + `\s+` + regexp.QuoteMeta(svc.Socket) + `\s+SERVING\s+\S+.*\s` +
			strconv.Itoa(s.Pid(svc.Name)) + `\s+` + regexp.QuoteMeta("http://"+svc.MetricsAddress+"/metrics"))
		if !re.MatchString(string(out)) {
			t.Errorf("status lacks a healthy line for %s:\n%s", svc.Name, out)
		}
	}
	if oneProcess() {
		// The node is one process: killed, every service is unreachable,
		// and flotctl, finding no gateway, asks each socket and says so.
		s.Kill9("gateway")
		cmd := exec.Command(filepath.Join(binDir, "flotctl"), "--address", s.Socket, "stack", "status")
		cmd.Env = append(os.Environ(), "FLOTILLA_ROOT="+s.Layout.Root, "FLOTILLA_STATE="+s.Layout.State,
			"FLOTILLA_METRICS_PORT="+strconv.Itoa(s.Layout.MetricsBasePort))
		out, err = cmd.Output()
		if err == nil {
			t.Errorf("stack status with the process down exited 0")
		}
		for _, name := range stack.Order {
			if !regexp.MustCompile(`(?m)^` + name + `\s+\S+\s+UNREACHABLE`).MatchString(string(out)) {
				t.Errorf("status with the process down does not show %s unreachable:\n%s", name, out)
			}
		}
		return
	}
	s.Kill9("snapshotd")
	out, _ = exec.Command(filepath.Join(binDir, "flotctl"), "--address", s.Socket, "stack", "status").CombinedOutput()
	if !regexp.MustCompile(`(?m)^snapshotd\s+\S+\s+UNREACHABLE`).MatchString(string(out)) {
		t.Errorf("status does not show snapshotd unreachable:\n%s", out)
	}

	// Without the gateway, flotctl asks each local daemon itself, and fails.
	s.Kill9("gateway")
	cmd := exec.Command(filepath.Join(binDir, "flotctl"), "--address", s.Socket, "stack", "status")
	cmd.Env = append(os.Environ(), "FLOTILLA_ROOT="+s.Layout.Root, "FLOTILLA_STATE="+s.Layout.State,
		"FLOTILLA_METRICS_PORT="+strconv.Itoa(s.Layout.MetricsBasePort))
	out, err = cmd.Output()
	if err == nil {
		t.Errorf("stack status with the gateway down exited 0")
	}
	for _, want := range []string{`(?m)^gateway\s+\S+\s+UNREACHABLE`, `(?m)^contentd\s+\S+\s+SERVING`, `(?m)^snapshotd\s+\S+\s+UNREACHABLE`} {
		if !regexp.MustCompile(want).MatchString(string(out)) {
			t.Errorf("status without the gateway does not match %s:\n%s", want, out)
		}
	}
}

func TestEveryDaemonExplainsItself(t *testing.T) {
	for _, name := range append(slices.Clone(stack.Order), stack.ProcessName) {
		t.Run(name, func(t *testing.T) {
			out, err := exec.Command(filepath.Join(binDir, name), "--help").CombinedOutput()
			if err != nil {
				t.Fatalf("%s --help: %v\n%s", name, err, out)
			}
			// flotilla takes each component's flags as -<component>.<flag>.
			prefixes := []string{"-"}
			if name == stack.ProcessName {
				prefixes = nil
				for _, c := range stack.Order {
					prefixes = append(prefixes, "-"+c+".")
				}
			}
			for _, p := range prefixes {
				for _, flag := range []string{"address", "root", "state", "metrics-address", "config", "log-level"} {
					if !strings.Contains(string(out), p+flag) {
						t.Errorf("%s --help does not mention %s", name, p+flag)
					}
				}
			}
		})
	}
}

// TestMakeUpDownRepeatedly drives the README's own commands.
func TestMakeUpDownRepeatedly(t *testing.T) {
	requireTool(t, "make")
	dir, err := os.MkdirTemp("", "flmk")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	repo, _ := filepath.Abs("..")
	env := append(os.Environ(),
		"FLOTILLA_ROOT="+filepath.Join(dir, "root"),
		"FLOTILLA_STATE="+filepath.Join(dir, "state"),
		"FLOTILLA_METRICS_PORT="+strconv.Itoa(freePortRange(t, len(stack.Order))),
		"FLOTILLA_MODE="+string(mode),
	)
	l := stack.DefaultLayout(binDir)
	l.Root, l.State = filepath.Join(dir, "root"), filepath.Join(dir, "state")
	defer stack.Down(l, 10*time.Second)
	make := func(target string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "make", "-s", "-C", repo, target)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, out)
		}
	}
	healthy := func() {
		t.Helper()
		for _, svc := range l.Services() {
			if st, err := stack.Health(context.Background(), svc.Socket); err != nil || st.String() != "SERVING" {
				t.Fatalf("after make up, %s is %v %v", svc.Name, st, err)
			}
		}
	}
	down := func() {
		t.Helper()
		for _, svc := range l.Services() {
			if _, err := os.Stat(svc.Socket); !os.IsNotExist(err) {
				t.Fatalf("after make down, %s's socket is still there (%v)", svc.Name, err)
			}
		}
	}
	for i := 0; i < 2; i++ {
		make("up")
		healthy()
		make("down")
		down()
	}
	make("up")
	names := stack.Order
	if oneProcess() {
		names = []string{stack.ProcessName}
	}
	for _, name := range names {
		b, _ := os.ReadFile(l.PidFile(name))
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid <= 0 {
			t.Fatalf("no pid for %s", name)
		}
		p, _ := os.FindProcess(pid)
		p.Kill()
	}
	time.Sleep(200 * time.Millisecond)
	make("up") // sockets and pid files left by kill -9 must not stop it
	healthy()
	make("down")
	down()
}

func TestComposeFileIsValid(t *testing.T) {
	requireTool(t, "docker-compose")
	repo, _ := filepath.Abs("..")
	// docker-compose reads the file and resolves its anchors; what it
	// prints is checked against the binaries (no Docker engine here to run
	// it).
	out, err := exec.Command("docker-compose", "-f", filepath.Join(repo, "compose.yaml"), "config").Output()
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	var file struct {
		Services map[string]struct {
			Image      string   `yaml:"image"`
			Entrypoint []string `yaml:"entrypoint"`
			Command    []string `yaml:"command"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(out, &file); err != nil {
		t.Fatalf("docker-compose config printed what is not YAML: %v", err)
	}
	helps := map[string]string{}
	help := func(args ...string) string {
		key := strings.Join(args, " ")
		if h, ok := helps[key]; ok {
			return h
		}
		// Go's flag package prints the usage on -help and exits 2.
		b, _ := exec.Command(filepath.Join(binDir, args[0]), append(args[1:], "--help")...).CombinedOutput()
		helps[key] = string(b)
		return helps[key]
	}
	// checkFlags fails for every flag in args that binary's help does not list.
	checkFlags := func(service string, binary []string, args []string) {
		for _, a := range args {
			if !strings.HasPrefix(a, "-") {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !regexp.MustCompile(`(?m)^\s+(-\w, )?--?` + regexp.QuoteMeta(name) + `(\s|$)`).MatchString(help(binary...)) {
				t.Errorf("service %s: %s takes no flag --%s", service, strings.Join(binary, " "), name)
			}
		}
	}
	flagValue := func(args []string, name string) string {
		for i, a := range args {
			if a == "--"+name && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
				return v
			}
		}
		return ""
	}

	// The certs job: every flotctl line's flags, and what it issues for
	// which names.
	certs, ok := file.Services["certs"]
	if !ok {
		t.Fatal("compose.yaml has no certs job")
	}
	issued := map[string][]string{} // certificate name -> hosts
	for _, line := range strings.Split(strings.Join(certs.Command, "\n"), "\n") {
		words := strings.Fields(line)
		if len(words) < 3 || words[0] != "flotctl" {
			continue
		}
		checkFlags("certs", words[:3], words[3:])
		if words[2] == "issue" {
			name := words[len(words)-1]
			for i, w := range words {
				if w == "--host" && i+1 < len(words) {
					issued[name] = append(issued[name], words[i+1])
				}
			}
			if _, ok := issued[name]; !ok {
				issued[name] = nil
			}
		}
	}
	if len(issued) == 0 {
		t.Fatal("the certs job issues no certificate with flotctl certs issue")
	}
	certFor := func(service, path string) {
		name := strings.TrimSuffix(filepath.Base(path), ".pem")
		hosts, ok := issued[name]
		if !ok {
			t.Errorf("service %s uses %s, which the certs job does not issue", service, path)
		} else if !slices.Contains(hosts, service) {
			t.Errorf("service %s uses certificate %s, issued for %v, not for the name it is reached by", service, name, hosts)
		}
	}
	if r, ok := file.Services["redis"]; !ok {
		t.Error("compose.yaml has no redis")
	} else {
		certFor("redis", flagValue(r.Command, "tls-cert-file"))
	}

	nodes := map[string][]string{} // node -> components on it
	for name, svc := range file.Services {
		component, ok := strings.CutPrefix(svc.Image, "flotilla/")
		if !ok || len(svc.Entrypoint) > 0 {
			continue
		}
		if !slices.Contains(stack.Order, component) {
			t.Errorf("service %s runs image %s, which is no Flotilla component", name, svc.Image)
			continue
		}
		checkFlags(name, []string{component}, svc.Command)
		node := flagValue(svc.Command, "node")
		if node == "" {
			t.Errorf("service %s names no --node", name)
		}
		nodes[node] = append(nodes[node], component)
		if cert := flagValue(svc.Command, "tls-cert"); cert == "" {
			t.Errorf("service %s has no certificate (--tls-cert)", name)
		} else {
			certFor(name, cert)
		}
		if adv := flagValue(svc.Command, "advertise-address"); adv != "" && !strings.HasPrefix(adv, name+":") {
			t.Errorf("service %s advertises %s, not its own name", name, adv)
		}
		if !strings.HasPrefix(flagValue(svc.Command, "discovery"), "rediss://redis:") {
			t.Errorf("service %s does not find the others through Redis over TLS (--discovery %q)", name, flagValue(svc.Command, "discovery"))
		}
	}
	// A content tier and two nodes, each with its own gateway, eventd,
	// snapshotd and taskd.
	var workers []string
	for node, components := range nodes {
		slices.Sort(components)
		switch {
		case slices.Contains(components, "contentd"):
			if !slices.Contains(components, "eventd") {
				t.Errorf("the content tier (node %s) has no eventd: %v", node, components)
			}
		case slices.Equal(components, []string{"eventd", "gateway", "snapshotd", "taskd"}):
			workers = append(workers, node)
		default:
			t.Errorf("node %s runs %v, want gateway, eventd, snapshotd and taskd", node, components)
		}
	}
	if len(workers) != 2 {
		t.Errorf("compose.yaml has %d nodes running containers (%v), want two", len(workers), workers)
	}
}

// TestBackendOverTCP runs contentd on a TCP address, as it would on another
// host, and the gateway in front of it, over mutual TLS.
func TestBackendOverTCP(t *testing.T) {
	dir, err := os.MkdirTemp("", "fltcp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	contentdAddr := "127.0.0.1:" + strconv.Itoa(freePortRange(t, 1))
	gatewaySock := filepath.Join(dir, "gw.sock")
	start := func(name string, args ...string) {
		cmd := exec.Command(filepath.Join(binDir, name), append([]string{
			"--root", filepath.Join(dir, name), "--state", filepath.Join(dir, name+"-state")}, args...)...)
		logf, _ := os.Create(filepath.Join(dir, name+".log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait(); logf.Close() })
	}
	// TCP between services is mutual TLS only: a CA and a service
	// certificate from flotctl, as a lab cluster makes them.
	certsDir := filepath.Join(dir, "certs")
	for _, args := range [][]string{
		{"certs", "ca", "--dir", certsDir},
		{"certs", "issue", "--dir", certsDir, "--role", "service", "--host", "127.0.0.1", "svc"},
	} {
		if out, err := exec.Command(filepath.Join(binDir, "flotctl"), args...).CombinedOutput(); err != nil {
			t.Fatalf("flotctl %v: %v\n%s", args, err, out)
		}
	}
	tlsFlags := []string{"--tls-ca", filepath.Join(certsDir, "ca.pem"), "--tls-cert", filepath.Join(certsDir, "svc.pem"), "--tls-key", filepath.Join(certsDir, "svc-key.pem")}
	start("contentd", append([]string{"--address", "tcp://" + contentdAddr}, tlsFlags...)...)
	start("gateway", append([]string{"--address", gatewaySock, "--contentd", "tcp://" + contentdAddr}, tlsFlags...)...)
	s := &Stack{Socket: gatewaySock, t: t}
	var out string
	for i := 0; i < 100; i++ {
		if out, err = s.Ctr("default", "namespaces", "create", "over-tcp"); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("namespaces create through the gateway to contentd over TCP: %v\n%s", err, out)
	}
	if out := s.MustCtr("default", "namespaces", "ls", "-q"); !strings.Contains(out, "over-tcp") {
		t.Fatalf("namespace not listed:\n%s", out)
	}
}
