package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/flotctl/client"
	"github.com/flotilla/flotilla/flotctl/stack"
)

// globals are the flags every command shares.
type globals struct {
	address   string
	namespace string
	tls       tlsFlags
}

func newRootCommand() (*cobra.Command, *globals) {
	g := &globals{}
	root := &cobra.Command{
		Use:   "flotctl",
		Short: "Flotilla's command-line client",
		Long: "flotctl is the everyday client of a Flotilla node (or of any containerd): pull and run images,\n" +
			"list and inspect what is there, start and stop the node's stack. It speaks containerd's gRPC API\n" +
			"to --address, like ctr and nerdctl.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.address, "address", client.DefaultAddress(), "the containerd API socket: Flotilla's gateway ($CONTAINERD_ADDRESS, default $FLOTILLA_STATE/flotilla.sock)")
	root.PersistentFlags().StringVarP(&g.namespace, "namespace", "n", client.DefaultNamespaceFromEnv(), "the containerd namespace ($CONTAINERD_NAMESPACE)")
	g.tls.register(root)
	root.PersistentPreRunE = func(*cobra.Command, []string) error { return g.tls.use() }
	root.AddCommand(newCertsCommand(), newStackCommand(), newVersionCommand(g), newSnapshottersCommand(),
		newImagesCommand(g), newNamespacesCommand(g), newRunCommand(g), newPsCommand(g),
		newExecCommand(g), newLogsCommand(g), newKillCommand(g), newRmCommand(g), newEventsCommand(g),
		newPullCommand(g), newPushCommand(g), newGCCommand())
	return root, g
}

// client connects to --address in --namespace; the caller closes it.
func (g *globals) client() (*client.Client, error) {
	return client.New(g.address, g.namespace)
}

// withClient runs fn with a client, closed afterwards.
func (g *globals) withClient(fn func(c *client.Client) error) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// addFormatFlag adds --format to cmd and returns where it lands.
func addFormatFlag(cmd *cobra.Command) *string {
	return cmd.Flags().String("format", "table", "table for people, json for scripts")
}

func newStackCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stack",
		Short: "Start, stop and inspect this node's Flotilla daemons",
		Long: "The stack is eventd, contentd, snapshotd, taskd and the gateway, run from --bin with data under\n" +
			"$FLOTILLA_ROOT (default /var/lib/flotilla) and sockets, pid files and logs under $FLOTILLA_STATE\n" +
			"(default /run/flotilla). REDIS_URL, when set, is given to eventd. They run in one flotilla process\n" +
			"(mode one, the default) or each as a process of its own (mode separate); down and status work in both.",
	}
	exe, _ := os.Executable()
	bin := cmd.PersistentFlags().String("bin", filepath.Dir(exe), "directory holding the daemons' binaries")
	timeout := cmd.PersistentFlags().Duration("timeout", 20*time.Second, "how long each daemon may take to come up or stop")

	up := &cobra.Command{
		Use:   "up",
		Short: "Start every daemon that is not running and wait until all are healthy",
	}
	mode := up.Flags().String("mode", string(stack.DefaultLayout("").Mode),
		"one: every component in one flotilla process; separate: each daemon a process of its own (default from $FLOTILLA_MODE)")
	up.RunE = func(cmd *cobra.Command, _ []string) error {
		l := stack.DefaultLayout(*bin)
		m, err := stack.ParseMode(*mode)
		if err != nil {
			return err
		}
		l.Mode = m
		if err := stack.Up(cmd.Context(), l, *timeout); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "Flotilla is up (%s): ctr --address %s version\n", describeMode(l.Mode), l.GatewaySocket())
		return nil
	}
	cmd.AddCommand(up, &cobra.Command{
		Use:   "down",
		Short: "Stop every daemon gracefully (SIGTERM, then SIGKILL after --timeout)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return stack.Down(stack.DefaultLayout(*bin), *timeout)
		},
	}, &cobra.Command{
		Use:   "status",
		Short: "Show each service's address, health, version and metrics address; with discovery, every node's services too",
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, _ := cmd.Flags().GetString("address")
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			resp, err := stack.Status(ctx, addr)
			if err != nil {
				// Without the gateway, ask this node's daemons one by one.
				fmt.Fprintf(cmd.ErrOrStderr(), "flotctl: %v\nasking each local service directly:\n", err)
				stack.PrintStatus(cmd.OutOrStdout(), stack.LocalStatus(ctx, stack.DefaultLayout(*bin)))
				return fmt.Errorf("the gateway at %s is not answering", addr)
			}
			return stack.PrintStatus(cmd.OutOrStdout(), resp)
		},
	})
	return cmd
}

func describeMode(m stack.Mode) string {
	if m == stack.OneProcess {
		return "one process"
	}
	return "separate daemons"
}
