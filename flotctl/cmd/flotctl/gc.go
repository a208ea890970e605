package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/spf13/cobra"

	contentdv1 "github.com/flotilla/flotilla/proto/contentd/v1"
	"github.com/flotilla/flotilla/services/dial"
)

// newGCCommand runs a garbage collection across contentd, snapshotd and
// taskd now, through the gateway (or contentd's own socket, with
// --address), and prints what it removed.
func newGCCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Collect garbage now: remove the blobs, snapshots, leases and ingests nothing references, and say what went",
		Args:  cobra.NoArgs,
	}
	timeout := cmd.Flags().Duration("timeout", 5*time.Minute, "how long to wait for the collection")
	format := addFormatFlag(cmd)
	forget := cmd.Flags().String("forget-node", "",
		"instead of collecting, stop waiting for a node that is gone for good (collections stop while a node they know is down)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		addr, _ := cmd.Flags().GetString("address")
		conn, err := dial.Dial(addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(cmd.Context(), *timeout)
		defer cancel()
		if *forget != "" {
			if _, err := contentdv1.NewGCClient(conn).ForgetNode(ctx, &contentdv1.ForgetNodeRequest{Node: *forget}); err != nil {
				return fmt.Errorf("gc: %w", errgrpc.ToNative(err))
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "node %s forgotten: the next collection removes what only it referenced\n", *forget)
			return err
		}
		resp, err := contentdv1.NewGCClient(conn).Collect(ctx, &contentdv1.CollectRequest{})
		if err != nil {
			return fmt.Errorf("gc: %w", errgrpc.ToNative(err))
		}
		if *format == "json" {
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(gcReport(resp))
		}
		return printGC(cmd.OutOrStdout(), resp)
	}
	return cmd
}

type gcRemoved struct {
	Store       string `json:"store"`
	Kind        string `json:"kind"`
	Namespace   string `json:"namespace"`
	Snapshotter string `json:"snapshotter,omitempty"`
	ID          string `json:"id"`
}

type gcResult struct {
	Removed  []gcRemoved `json:"removed"`
	Bytes    int64       `json:"bytes"`
	Duration string      `json:"duration"`
	Marked   int64       `json:"marked"`
}

func gcReport(resp *contentdv1.CollectResponse) gcResult {
	out := gcResult{Removed: []gcRemoved{}, Bytes: resp.GetBytes(), Marked: resp.GetMarked(),
		Duration: time.Duration(resp.GetDurationNs()).String()}
	for _, r := range resp.GetRemoved() {
		out.Removed = append(out.Removed, gcRemoved{Store: r.GetStore(), Kind: r.GetKind(), Namespace: r.GetNamespace(),
			Snapshotter: r.GetSnapshotter(), ID: r.GetId()})
	}
	return out
}

func printGC(w io.Writer, resp *contentdv1.CollectResponse) error {
	if len(resp.GetRemoved()) > 0 {
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "STORE\tKIND\tNAMESPACE\tID")
		for _, r := range resp.GetRemoved() {
			id := r.GetId()
			if r.GetSnapshotter() != "" {
				id = r.GetSnapshotter() + "/" + id
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.GetStore(), r.GetKind(), r.GetNamespace(), id)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "removed %d objects, reclaimed %s (%d bytes) in %s; %d objects marked\n",
		len(resp.GetRemoved()), humanBytes(resp.GetBytes()), resp.GetBytes(),
		time.Duration(resp.GetDurationNs()).Round(time.Millisecond), resp.GetMarked())
	return err
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
