package main

import (
	"context"
	"fmt"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/flotctl/client"
	"github.com/flotilla/flotilla/flotctl/image"
	"github.com/flotilla/flotilla/flotctl/output"
)

// imageRow is one image as `flotctl images ls` prints it.
type imageRow struct {
	Name    string             `json:"name"`
	Target  ocispec.Descriptor `json:"target"`
	Size    int64              `json:"size"` // manifest, config and layers for this platform; -1 when unknown
	Created time.Time          `json:"created"`
	Updated time.Time          `json:"updated"`
	Labels  map[string]string  `json:"labels,omitempty"`
}

func newImagesCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "images",
		Aliases: []string{"image", "i"},
		Short:   "List, inspect, tag, remove, import and export images",
	}
	var platform string
	cmd.PersistentFlags().StringVar(&platform, "platform", "", "platform whose manifest sizes and inspects (default: this host's)")
	matcher := func() (platforms.MatchComparer, error) {
		if platform == "" {
			return platforms.Default(), nil
		}
		p, err := platforms.Parse(platform)
		if err != nil {
			return nil, fmt.Errorf("--platform %q: %w", platform, errdefs.ErrInvalidArgument)
		}
		return platforms.Only(p), nil
	}

	ls := &cobra.Command{
		Use:     "ls [FILTER...]",
		Aliases: []string{"list"},
		Short:   "List images (containerd filters, e.g. 'name~=busybox')",
	}
	format := addFormatFlag(ls)
	ls.RunE = func(cmd *cobra.Command, args []string) error {
		f, err := output.ParseFormat(*format)
		if err != nil {
			return err
		}
		m, err := matcher()
		if err != nil {
			return err
		}
		return g.withClient(func(c *client.Client) error {
			ctx := cmd.Context()
			resp, err := c.Images.List(ctx, &imagesapi.ListImagesRequest{Filters: args})
			if err != nil {
				return fmt.Errorf("list images: %w", err)
			}
			rows := make([]imageRow, 0, len(resp.Images))
			for _, img := range resp.Images {
				rows = append(rows, imageRow{
					Name: img.Name, Target: image.DescriptorFromProto(img.Target),
					Size:    imageSize(ctx, c, image.DescriptorFromProto(img.Target), m),
					Created: img.CreatedAt.AsTime(), Updated: img.UpdatedAt.AsTime(), Labels: img.Labels,
				})
			}
			now := time.Now()
			return output.Print(cmd.OutOrStdout(), f, rows, []output.Column[imageRow]{
				{Header: "NAME", Cell: func(r imageRow) string { return r.Name }},
				{Header: "DIGEST", Cell: func(r imageRow) string { return output.Short(r.Target.Digest.String()) }},
				{Header: "TYPE", Cell: func(r imageRow) string { return mediaTypeName(r.Target.MediaType) }},
				{Header: "SIZE", Cell: func(r imageRow) string {
					if r.Size < 0 {
						return "-"
					}
					return output.Size(r.Size)
				}},
				{Header: "CREATED", Cell: func(r imageRow) string { return output.Ago(r.Created, now) }},
			})
		})
	}

	inspect := &cobra.Command{
		Use:   "inspect NAME...",
		Short: "Print images' records, manifests, configs and chain IDs as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := matcher()
			if err != nil {
				return err
			}
			return g.withClient(func(c *client.Client) error {
				type inspected struct {
					Name     string             `json:"name"`
					Target   ocispec.Descriptor `json:"target"`
					Labels   map[string]string  `json:"labels,omitempty"`
					Created  time.Time          `json:"created"`
					Manifest ocispec.Descriptor `json:"manifest_descriptor"`
					Content  struct {
						Manifest ocispec.Manifest `json:"manifest"`
						Config   ocispec.Image    `json:"config"`
					} `json:"content"`
					ChainIDs []digest.Digest `json:"chain_ids"`
				}
				var out []inspected
				for _, name := range args {
					r, err := image.Resolve(cmd.Context(), c.Images, c.Content, name, m)
					if err != nil {
						return err
					}
					rec, err := image.Get(cmd.Context(), c.Images, name)
					if err != nil {
						return err
					}
					i := inspected{Name: name, Target: r.Target, Labels: rec.Labels, Created: rec.CreatedAt.AsTime(), Manifest: r.ManifestDesc, ChainIDs: r.ChainIDs}
					i.Content.Manifest, i.Content.Config = r.Manifest, r.Config
					out = append(out, i)
				}
				return output.WriteJSON(cmd.OutOrStdout(), out)
			})
		},
	}

	var force bool
	tag := &cobra.Command{
		Use:   "tag SOURCE TARGET...",
		Short: "Give an image more names (its target is shared, nothing is copied)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(func(c *client.Client) error {
				ctx := cmd.Context()
				src, err := image.Get(ctx, c.Images, args[0])
				if err != nil {
					return err
				}
				for _, dst := range args[1:] {
					img := &imagesapi.Image{Name: dst, Target: src.Target, Labels: src.Labels}
					_, err := c.Images.Create(ctx, &imagesapi.CreateImageRequest{Image: img})
					if errdefs.IsAlreadyExists(err) {
						if !force {
							return fmt.Errorf("image %s already exists (use --force to point it at %s): %w", dst, args[0], err)
						}
						_, err = c.Images.Update(ctx, &imagesapi.UpdateImageRequest{Image: img})
					}
					if err != nil {
						return fmt.Errorf("tag %s as %s: %w", args[0], dst, err)
					}
					fmt.Fprintln(cmd.OutOrStdout(), dst)
				}
				return nil
			})
		},
	}
	tag.Flags().BoolVarP(&force, "force", "f", false, "replace a target name that already exists")

	var sync bool
	rm := &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove", "delete"},
		Short:   "Remove image records (their content stays until garbage collected)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withClient(func(c *client.Client) error {
				var failed []error
				for _, name := range args {
					_, err := c.Images.Delete(cmd.Context(), &imagesapi.DeleteImageRequest{Name: name, Sync: sync})
					switch {
					case errdefs.IsNotFound(err):
						failed = append(failed, fmt.Errorf("image %s: not found (flotctl images ls): %w", name, err))
					case err != nil:
						failed = append(failed, fmt.Errorf("remove image %s: %w", name, err))
					default:
						fmt.Fprintln(cmd.OutOrStdout(), name)
					}
				}
				return joinErrors(failed)
			})
		},
	}
	rm.Flags().BoolVar(&sync, "sync", false, "wait until garbage collection has removed the content")

	cmd.AddCommand(ls, inspect, tag, rm, newImportCommand(g), newExportCommand(g))
	return cmd
}

// imageSize is what the image takes for platform m: manifest, config and
// layers (compressed), or -1 when some of it is not in the content store.
func imageSize(ctx context.Context, c *client.Client, target ocispec.Descriptor, m platforms.MatchComparer) int64 {
	md, err := image.ChooseManifest(ctx, c.Content, target, m)
	if err != nil {
		return -1
	}
	var man ocispec.Manifest
	if err := image.ReadJSON(ctx, c.Content, md, &man); err != nil {
		return -1
	}
	size := md.Size + man.Config.Size
	for _, l := range man.Layers {
		size += l.Size
	}
	return size
}

// mediaTypeName shortens an image target's media type.
func mediaTypeName(mt string) string {
	switch mt {
	case ocispec.MediaTypeImageIndex:
		return "oci-index"
	case ocispec.MediaTypeImageManifest:
		return "oci-manifest"
	case image.MediaTypeDockerManifestList:
		return "docker-list"
	case image.MediaTypeDockerManifest:
		return "docker-manifest"
	}
	return mt
}
