package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/flotilla/flotilla/flotctl/client"
	"github.com/flotilla/flotilla/flotctl/container"
	"github.com/flotilla/flotilla/flotctl/progress"
	"github.com/flotilla/flotilla/flotctl/transfer"
)

// transferClient returns a Transfer API client on c.
func transferClient(c *client.Client) *transfer.Client {
	return &transfer.Client{Transfer: c.Transfer, Streaming: c.Streaming, Leases: c.Leases}
}

// newDisplay picks live bars when w is a terminal, plain lines otherwise
// (or when quiet, nothing but errors).
func newDisplay(w io.Writer, verb string, quiet bool) progress.Display {
	if quiet {
		return nil
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return progress.NewBars(w, verb)
	}
	return progress.NewLines(w, verb)
}

// runTransfer runs fn with a display's Report (nil when quiet), ends the
// display with fn's outcome and stops on SIGINT/SIGTERM.
func runTransfer(cmd *cobra.Command, verb string, quiet bool, fn func(ctx context.Context, report func(transfer.Progress)) error) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	d := newDisplay(cmd.OutOrStdout(), verb, quiet)
	var report func(transfer.Progress)
	if d != nil {
		report = d.Report
	}
	err := fn(ctx, report)
	if d != nil {
		d.Finish(err)
	}
	return err
}

// parsePlatforms reads --platform values ("linux/amd64"); none means this
// host's platform.
func parsePlatforms(ss []string) ([]ocispec.Platform, error) {
	if len(ss) == 0 {
		return []ocispec.Platform{platforms.DefaultSpec()}, nil
	}
	var out []ocispec.Platform
	for _, s := range ss {
		p, err := platforms.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("--platform %q: %w", s, errdefs.ErrInvalidArgument)
		}
		out = append(out, platforms.Normalize(p))
	}
	return out, nil
}

func newPullCommand(g *globals) *cobra.Command {
	var plats []string
	var snapshotter, hostsDir string
	var plainHTTP, quiet, noUnpack bool
	cmd := &cobra.Command{
		Use:   "pull [flags] REFERENCE",
		Short: "Pull an image from a registry and unpack it, through the server's Transfer API",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := parsePlatforms(plats)
			if err != nil {
				return err
			}
			to := transfer.Store{Name: args[0], Platforms: ps, AllMetadata: true}
			if !noUnpack {
				to.Unpack = snapshotter
			}
			return g.withClient(func(c *client.Client) error {
				return runTransfer(cmd, "pulled "+args[0]+":", quiet, func(ctx context.Context, report func(transfer.Progress)) error {
					err := transferClient(c).Pull(ctx, transfer.Registry{Reference: args[0], PlainHTTP: plainHTTP, HostDir: hostsDir}, to, report)
					if err != nil {
						return fmt.Errorf("pull %s: %w", args[0], err)
					}
					return nil
				})
			})
		},
	}
	cmd.Flags().StringArrayVar(&plats, "platform", nil, "platform to pull, e.g. linux/arm64 (repeatable; default: this host's)")
	cmd.Flags().StringVar(&snapshotter, "snapshotter", container.DefaultSnapshotter, "snapshotter to unpack into")
	cmd.Flags().BoolVar(&noUnpack, "no-unpack", false, "fetch only; do not unpack")
	cmd.Flags().BoolVar(&plainHTTP, "plain-http", false, "talk HTTP, not HTTPS, to the registry")
	cmd.Flags().StringVar(&hostsDir, "hosts-dir", "", "directory of registry hosts.toml files (containerd's certs.d layout)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print no progress")
	return cmd
}

func newPushCommand(g *globals) *cobra.Command {
	var plats []string
	var hostsDir string
	var plainHTTP, quiet bool
	cmd := &cobra.Command{
		Use:   "push [flags] REFERENCE [LOCAL-NAME]",
		Short: "Push an image to a registry through the server's Transfer API",
		Long:  "Push sends the image LOCAL-NAME (default: REFERENCE) to the registry as REFERENCE.",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			local := args[0]
			if len(args) == 2 {
				local = args[1]
			}
			from := transfer.Store{Name: local}
			if len(plats) > 0 {
				ps, err := parsePlatforms(plats)
				if err != nil {
					return err
				}
				from.Platforms = ps
			}
			return g.withClient(func(c *client.Client) error {
				return runTransfer(cmd, "pushed "+args[0]+":", quiet, func(ctx context.Context, report func(transfer.Progress)) error {
					err := transferClient(c).Push(ctx, from, transfer.Registry{Reference: args[0], PlainHTTP: plainHTTP, HostDir: hostsDir}, report)
					if err != nil {
						return fmt.Errorf("push %s: %w", args[0], err)
					}
					return nil
				})
			})
		},
	}
	cmd.Flags().StringArrayVar(&plats, "platform", nil, "push only this platform's manifest (repeatable; default: all)")
	cmd.Flags().BoolVar(&plainHTTP, "plain-http", false, "talk HTTP, not HTTPS, to the registry")
	cmd.Flags().StringVar(&hostsDir, "hosts-dir", "", "directory of registry hosts.toml files (containerd's certs.d layout)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print no progress")
	return cmd
}

func newImportCommand(g *globals) *cobra.Command {
	var plats []string
	var snapshotter, baseName, indexName string
	var noUnpack, allPlatforms, quiet bool
	cmd := &cobra.Command{
		Use:   "import [flags] FILE|-",
		Short: "Import images from an OCI or Docker archive (tar) through the server's Transfer API",
		Long: "Import creates an image for each name the archive's index annotates (org.opencontainers.image.ref.name,\n" +
			"io.containerd.image.name), under --base-name for bare tags, and unpacks them for this platform.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r io.Reader = cmd.InOrStdin()
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return fmt.Errorf("import: %w", err)
				}
				defer f.Close()
				r = f
			}
			ps, err := parsePlatforms(plats)
			if err != nil {
				return err
			}
			to := transfer.Store{Name: indexName}
			if !allPlatforms {
				to.Platforms = ps
			}
			if !noUnpack {
				to.Unpack = snapshotter
				if allPlatforms {
					to.Platforms = nil
				}
			}
			prefix, overwrite := baseName, false
			if prefix == "" {
				prefix, overwrite = "import", true
			}
			to.ExtraReferences = []*transfertypes.ImageReference{{Name: prefix, IsPrefix: true, AllowOverwrite: overwrite}}
			return g.withClient(func(c *client.Client) error {
				return runTransfer(cmd, "imported", quiet, func(ctx context.Context, report func(transfer.Progress)) error {
					if err := transferClient(c).Import(ctx, r, to, report); err != nil {
						return fmt.Errorf("import %s: %w", args[0], err)
					}
					return nil
				})
			})
		},
	}
	cmd.Flags().StringArrayVar(&plats, "platform", nil, "platform to import and unpack (default: this host's)")
	cmd.Flags().BoolVar(&allPlatforms, "all-platforms", false, "import every platform in the archive")
	cmd.Flags().StringVar(&snapshotter, "snapshotter", container.DefaultSnapshotter, "snapshotter to unpack into")
	cmd.Flags().BoolVar(&noUnpack, "no-unpack", false, "import only; do not unpack")
	cmd.Flags().StringVar(&baseName, "base-name", "", "name prefix for images the archive names only by tag")
	cmd.Flags().StringVar(&indexName, "index-name", "", "also name the archive's index")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print no progress")
	return cmd
}

func newExportCommand(g *globals) *cobra.Command {
	var plats []string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "export [flags] FILE|- NAME...",
		Short: "Export images as an OCI archive (tar) through the server's Transfer API",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ps []ocispec.Platform
			if len(plats) > 0 {
				var err error
				if ps, err = parsePlatforms(plats); err != nil {
					return err
				}
			}
			from := transfer.Store{}
			for _, n := range args[1:] {
				from.ExtraReferences = append(from.ExtraReferences, &transfertypes.ImageReference{Name: n})
			}
			var w io.Writer = cmd.OutOrStdout()
			var f *os.File
			if args[0] != "-" {
				var err error
				if f, err = os.Create(args[0]); err != nil {
					return fmt.Errorf("export: %w", err)
				}
				w = f
			}
			progressOut := cmd.OutOrStdout()
			if args[0] == "-" {
				progressOut, quiet = cmd.ErrOrStderr(), true
			}
			err := g.withClient(func(c *client.Client) error {
				cmd.SetOut(progressOut)
				return runTransfer(cmd, "exported", quiet, func(ctx context.Context, report func(transfer.Progress)) error {
					if err := transferClient(c).Export(ctx, from, w, ps, report); err != nil {
						return fmt.Errorf("export: %w", err)
					}
					return nil
				})
			})
			if f != nil {
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					os.Remove(args[0])
				}
			}
			return err
		},
	}
	cmd.Flags().StringArrayVar(&plats, "platform", nil, "export only this platform (repeatable; default: all)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print no progress")
	return cmd
}
