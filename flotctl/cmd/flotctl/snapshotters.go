package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	snapshotterv1 "github.com/flotilla/flotilla/proto/snapshotter/v1"
	"github.com/flotilla/flotilla/services/dial"
)

// newSnapshottersCommand administers snapshotd's snapshotter plugins
// through the gateway (or snapshotd's own socket, with --address).
func newSnapshottersCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "snapshotters",
		Aliases: []string{"snapshotter"},
		Short:   "List, add, replace and remove snapshotd's snapshotter plugins while it runs",
	}
	timeout := cmd.PersistentFlags().Duration("timeout", 30*time.Second, "how long to wait for snapshotd's answer")

	// run dials --address and calls fn with a Snapshotters client.
	run := func(cmd *cobra.Command, fn func(ctx context.Context, c snapshotterv1.SnapshottersClient) error) error {
		addr, _ := cmd.Flags().GetString("address")
		conn, err := dial.Dial(addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(cmd.Context(), *timeout)
		defer cancel()
		return fn(ctx, snapshotterv1.NewSnapshottersClient(conn))
	}
	// namePathCommand is a subcommand taking NAME and PATH that sends NAME
	// and PATH (made absolute, unless a bare file name) through call, then
	// prints the snapshotter it answers.
	namePathCommand := func(use, short string,
		call func(ctx context.Context, c snapshotterv1.SnapshottersClient, name, path string) (*snapshotterv1.Snapshotter, error)) *cobra.Command {
		return &cobra.Command{
			Use:   use,
			Short: short,
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				// A bare file name is snapshotd's to find in its plugin
				// directory (which may be on another host); a path is
				// made absolute here.
				path := args[1]
				if strings.Contains(path, "/") {
					abs, err := filepath.Abs(path)
					if err != nil {
						return fmt.Errorf("plugin path %q: %w", args[1], err)
					}
					path = abs
				}
				return run(cmd, func(ctx context.Context, c snapshotterv1.SnapshottersClient) error {
					sn, err := call(ctx, c, args[0], path)
					if err != nil {
						return err
					}
					return printSnapshotters(cmd.OutOrStdout(), sn)
				})
			},
		}
	}

	var force bool
	remove := &cobra.Command{
		Use:     "remove NAME",
		Aliases: []string{"rm"},
		Short:   "Stop a snapshotter plugin and forget it (refused while it holds active snapshots, unless --force)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return run(cmd, func(ctx context.Context, c snapshotterv1.SnapshottersClient) error {
				if _, err := c.Remove(ctx, &snapshotterv1.RemoveSnapshotterRequest{Name: args[0], Force: force}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
				return nil
			})
		},
	}
	remove.Flags().BoolVarP(&force, "force", "f", false, "remove it even while it holds active snapshots")

	cmd.AddCommand(&cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the snapshotter plugins: name, pid, state, active snapshots, executable",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd, func(ctx context.Context, c snapshotterv1.SnapshottersClient) error {
				resp, err := c.List(ctx, &snapshotterv1.ListSnapshottersRequest{})
				if err != nil {
					return err
				}
				return printSnapshotters(cmd.OutOrStdout(), resp.Snapshotters...)
			})
		},
	}, namePathCommand("add NAME PATH",
		"Start the plugin executable at PATH, which must lie in snapshotd's --plugin-dir (a bare file name is looked up there), as snapshotter NAME (ctr --snapshotter NAME ...)",
		func(ctx context.Context, c snapshotterv1.SnapshottersClient, name, path string) (*snapshotterv1.Snapshotter, error) {
			resp, err := c.Add(ctx, &snapshotterv1.AddSnapshotterRequest{Name: name, Path: path})
			return resp.GetSnapshotter(), err
		},
	), namePathCommand("replace NAME PATH",
		"Replace snapshotter NAME's executable with PATH (in snapshotd's --plugin-dir, as for add); the new process takes over its data, mounts stay",
		func(ctx context.Context, c snapshotterv1.SnapshottersClient, name, path string) (*snapshotterv1.Snapshotter, error) {
			resp, err := c.Replace(ctx, &snapshotterv1.ReplaceSnapshotterRequest{Name: name, Path: path})
			return resp.GetSnapshotter(), err
		},
	), remove)
	return cmd
}

func printSnapshotters(out io.Writer, ss ...*snapshotterv1.Snapshotter) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tPID\tSTATE\tACTIVE\tRESTARTS\tPATH\tERROR")
	for _, s := range ss {
		active := "-"
		if s.ActiveSnapshots >= 0 {
			active = strconv.FormatInt(s.ActiveSnapshots, 10)
		}
		pid := "-"
		if s.Pid > 0 {
			pid = strconv.FormatInt(s.Pid, 10)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Name, pid, s.State, active, s.Restarts, s.Path, s.Error)
	}
	return w.Flush()
}
