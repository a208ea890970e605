package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/flotctl/client"
	"github.com/flotilla/flotilla/flotctl/output"
	"github.com/flotilla/flotilla/services/version"
)

// versions is what `flotctl version` prints.
type versions struct {
	Client struct {
		Version  string `json:"version"`
		Revision string `json:"revision"`
	} `json:"client"`
	Server *struct {
		Address  string `json:"address"`
		Version  string `json:"version"`
		Revision string `json:"revision"`
	} `json:"server,omitempty"`
	ServerError string `json:"server_error,omitempty"`
}

func newVersionCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print flotctl's version and the server's",
		Args:  cobra.NoArgs,
	}
	format := addFormatFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		f, err := output.ParseFormat(*format)
		if err != nil {
			return err
		}
		var v versions
		v.Client.Version, v.Client.Revision = version.Version, version.Revision
		var serverErr error
		g.withClient(func(c *client.Client) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			resp, err := c.Version.Version(ctx, &emptypb.Empty{})
			if err != nil {
				serverErr = client.Explain(err, g.address, g.namespace)
				v.ServerError = serverErr.Error()
				return nil
			}
			v.Server = &struct {
				Address  string `json:"address"`
				Version  string `json:"version"`
				Revision string `json:"revision"`
			}{g.address, resp.Version, resp.Revision}
			return nil
		})
		out := cmd.OutOrStdout()
		if f == output.JSON {
			if err := output.WriteJSON(out, v); err != nil {
				return err
			}
			return serverErr
		}
		fmt.Fprintf(out, "flotctl %s (%s)\n", v.Client.Version, v.Client.Revision)
		if v.Server != nil {
			fmt.Fprintf(out, "server  %s (%s) at %s\n", v.Server.Version, v.Server.Revision, v.Server.Address)
		}
		return serverErr
	}
	return cmd
}
