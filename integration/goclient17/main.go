// Command goclient17 runs containerd's Go client 1.7 against an address, so
// the integration tests can prove that client works on Flotilla. It is its
// own module, outside the workspace: the 1.7 client does not build with the
// containerd API module and runtime-spec versions the workspace uses.
//
// Usage: goclient17 -address SOCKET -namespace NS COMMAND ARGS...
//
//	new                          containerd.New with NS as the default namespace; prints its labels
//	set-label KEY VALUE          sets a label on NS
//	create-container ID          creates container ID with a default spec running "true"
//	delete-container ID          deletes container ID
//
// It prints what it did on stdout and exits 1 with the error on stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
)

func main() {
	address := flag.String("address", "", "containerd socket")
	ns := flag.String("namespace", "default", "namespace")
	timeout := flag.Duration("timeout", time.Minute, "time allowed for the command")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *address, *ns, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "goclient17:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, address, ns string, args []string) error {
	if len(args) == 0 {
		return errors.New("no command")
	}
	client, err := containerd.New(address, containerd.WithDefaultNamespace(ns), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("new: %w", err)
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, ns)
	switch cmd, args := args[0], args[1:]; {
	case cmd == "new" && len(args) == 0:
		labels, err := client.NamespaceService().Labels(ctx, ns)
		if err != nil {
			return fmt.Errorf("labels: %w", err)
		}
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Printf("namespace %s labels", ns)
		for _, k := range keys {
			fmt.Printf(" %s=%s", k, labels[k])
		}
		fmt.Println()
	case cmd == "set-label" && len(args) == 2:
		if err := client.NamespaceService().SetLabel(ctx, ns, args[0], args[1]); err != nil {
			return fmt.Errorf("set label: %w", err)
		}
		fmt.Printf("label %s=%s set on %s\n", args[0], args[1], ns)
	case cmd == "create-container" && len(args) == 1:
		if _, err := client.NewContainer(ctx, args[0], containerd.WithNewSpec(oci.WithProcessArgs("true"))); err != nil {
			return fmt.Errorf("create container: %w", err)
		}
		fmt.Printf("container %s created\n", args[0])
	case cmd == "delete-container" && len(args) == 1:
		c, err := client.LoadContainer(ctx, args[0])
		if err != nil {
			return fmt.Errorf("load container: %w", err)
		}
		if err := c.Delete(ctx); err != nil {
			return fmt.Errorf("delete container: %w", err)
		}
		fmt.Printf("container %s deleted\n", args[0])
	default:
		return fmt.Errorf("unknown command or wrong arguments: %q", append([]string{cmd}, args...))
	}
	return nil
}
