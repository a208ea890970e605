package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/flotctl/stack"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/version"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "flotctl",
		Short:         "Flotilla's command-line client",
		Long:          "flotctl drives a Flotilla node: start and stop its stack and show its state.\nFor containerd's own commands, point ctr at the gateway: ctr --address $FLOTILLA_STATE/flotilla.sock ...",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("address", filepath.Join(config.DefaultState(), "flotilla.sock"), "the gateway's socket")
	root.AddCommand(newStackCommand(), newVersionCommand(), newSnapshottersCommand())
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print flotctl's version",
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "flotctl %s (%s)\n", version.Version, version.Revision)
		},
	}
}

func newStackCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stack",
		Short: "Start, stop and inspect this node's Flotilla daemons",
		Long: "The stack is eventd, contentd, snapshotd, taskd and the gateway, run from --bin with data under\n" +
			"$FLOTILLA_ROOT (default /var/lib/flotilla) and sockets, pid files and logs under $FLOTILLA_STATE\n" +
			"(default /run/flotilla). REDIS_URL, when set, is given to eventd.",
	}
	exe, _ := os.Executable()
	bin := cmd.PersistentFlags().String("bin", filepath.Dir(exe), "directory holding the daemons' binaries")
	timeout := cmd.PersistentFlags().Duration("timeout", 20*time.Second, "how long each daemon may take to come up or stop")

	cmd.AddCommand(&cobra.Command{
		Use:   "up",
		Short: "Start every daemon that is not running and wait until all are healthy",
		RunE: func(cmd *cobra.Command, _ []string) error {
			l := stack.DefaultLayout(*bin)
			if err := stack.Up(cmd.Context(), l, *timeout); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Flotilla is up: ctr --address %s version\n", l.GatewaySocket())
			return nil
		},
	}, &cobra.Command{
		Use:   "down",
		Short: "Stop every daemon gracefully (SIGTERM, then SIGKILL after --timeout)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return stack.Down(stack.DefaultLayout(*bin), *timeout)
		},
	}, &cobra.Command{
		Use:   "status",
		Short: "Show each service's address, health, version and metrics address",
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
