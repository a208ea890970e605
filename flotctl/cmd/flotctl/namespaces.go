package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/flotctl/client"
	"github.com/flotilla/flotilla/flotctl/output"
)

type namespaceRow struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

func newNamespacesCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "namespaces",
		Aliases: []string{"namespace", "ns"},
		Short:   "List, create and remove namespaces",
	}
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List namespaces and their labels",
		Args:    cobra.NoArgs,
	}
	format := addFormatFlag(ls)
	ls.RunE = func(cmd *cobra.Command, _ []string) error {
		f, err := output.ParseFormat(*format)
		if err != nil {
			return err
		}
		return g.withClient(func(c *client.Client) error {
			resp, err := c.Namespaces.List(cmd.Context(), &namespacesapi.ListNamespacesRequest{})
			if err != nil {
				return fmt.Errorf("list namespaces: %w", err)
			}
			rows := make([]namespaceRow, 0, len(resp.Namespaces))
			for _, n := range resp.Namespaces {
				rows = append(rows, namespaceRow{Name: n.Name, Labels: n.Labels})
			}
			return output.Print(cmd.OutOrStdout(), f, rows, []output.Column[namespaceRow]{
				{Header: "NAME", Cell: func(r namespaceRow) string { return r.Name }},
				{Header: "LABELS", Cell: func(r namespaceRow) string { return formatLabels(r.Labels) }},
			})
		})
	}
	var labels []string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a namespace",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := parseLabels(labels)
			if err != nil {
				return err
			}
			return g.withClient(func(c *client.Client) error {
				_, err := c.Namespaces.Create(cmd.Context(), &namespacesapi.CreateNamespaceRequest{Namespace: &namespacesapi.Namespace{Name: args[0], Labels: l}})
				if err != nil {
					return fmt.Errorf("create namespace %s: %w", args[0], err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), args[0])
				return nil
			})
		},
	}
	create.Flags().StringArrayVar(&labels, "label", nil, "KEY=VALUE label (repeatable)")
	rm := &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove", "delete"},
		Short:   "Remove empty namespaces",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(func(c *client.Client) error {
				var failed []error
				for _, n := range args {
					_, err := c.Namespaces.Delete(cmd.Context(), &namespacesapi.DeleteNamespaceRequest{Name: n})
					switch {
					case errdefs.IsFailedPrecondition(err):
						failed = append(failed, fmt.Errorf("namespace %s is not empty: remove its containers, images and snapshots first: %w", n, err))
					case err != nil:
						failed = append(failed, fmt.Errorf("remove namespace %s: %w", n, err))
					default:
						fmt.Fprintln(cmd.OutOrStdout(), n)
					}
				}
				return joinErrors(failed)
			})
		},
	}
	cmd.AddCommand(ls, create, rm)
	return cmd
}

// joinErrors returns nil, the one error, or all of them on one line each.
func joinErrors(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return fmt.Errorf("%s", strings.Join(msgs, "\nflotctl: "))
}

func formatLabels(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

// parseLabels reads KEY=VALUE pairs.
func parseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want KEY=VALUE: %w", kv, errdefs.ErrInvalidArgument)
		}
		out[k] = v
	}
	return out, nil
}
