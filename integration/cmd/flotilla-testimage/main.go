// Command flotilla-testimage builds Flotilla's test images from files on this machine and
// writes them as OCI archives or layouts, or pushes them to a registry over plain HTTP.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/flotilla/flotilla/integration/imagekit"
)

const usage = `flotilla-testimage builds OCI test images from files on this machine (no network).

Usage:
  flotilla-testimage build --kind KIND --out IMAGE.tar [--ref NAME:TAG] [options]
  flotilla-testimage build --kind KIND --layout DIR    [--ref NAME:TAG] [options]
  flotilla-testimage push  --registry 127.0.0.1:PORT --kind KIND --ref NAME:TAG [options]
  flotilla-testimage check --kind busybox|layers DIR

Kinds:
  busybox    runnable busybox from Debian's busybox-static (/bin/busybox), Cmd ["sh"]
  layers     3 layers with whiteouts, an opaque dir, hardlinks, symlinks, setuid and 0600 files
  multiarch  index of linux/amd64 and linux/arm64 busybox manifests
  large      one layer of --size bytes of incompressible pseudo-random data
  hostile    one layer attacking the host (--attack, --target), for unpack tests

build writes an OCI archive (--out, "-" for stdout) that "ctr images import" accepts, named
by --ref (default flotilla/KIND:latest), or an OCI image layout directory (--layout).
push uploads to REGISTRY/REF over plain HTTP without authentication.
check compares DIR (an unpacked or mounted root filesystem) with the image's expected tree
and lists every difference; it exits 0 only when they match exactly.

Examples:
  flotilla-testimage build --kind busybox --out busybox.tar --ref docker.io/library/busybox:latest
  ctr images import busybox.tar
  flotilla-testimage push --registry 127.0.0.1:5000 --kind large --size 1GiB --compression none --ref big:1

Options:
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "flotilla-testimage:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		newFlags(stderr).fs.PrintDefaults()
		if len(args) == 0 {
			return errors.New("missing command: build, push or check")
		}
		return flag.ErrHelp
	}
	cmd := args[0]
	if cmd != "build" && cmd != "push" && cmd != "check" {
		return fmt.Errorf("unknown command %q: want build, push or check (see --help)", cmd)
	}
	f := newFlags(stderr)
	if err := f.fs.Parse(args[1:]); err != nil {
		return err
	}
	if cmd == "check" {
		if f.fs.NArg() != 1 {
			return errors.New("check needs one directory")
		}
		return f.check(f.fs.Arg(0), stdout)
	}
	if f.fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", f.fs.Args())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	img, err := f.build()
	if err != nil {
		return err
	}
	defer img.Close()
	ref := f.ref
	if ref == "" {
		if cmd == "push" {
			return errors.New("push needs --ref NAME:TAG")
		}
		ref = "flotilla/" + f.kind + ":latest"
	}

	switch cmd {
	case "push":
		if f.registry == "" {
			return errors.New("push needs --registry HOST:PORT")
		}
		full := strings.TrimSuffix(f.registry, "/") + "/" + ref
		if err := img.Push(ctx, full); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %s\n", full, img.Target.Digest)
		return nil
	default:
		return f.write(img, ref, stdout)
	}
}

type flags struct {
	fs                                         *flag.FlagSet
	kind, size, compression, format, busybox   string
	out, layout, ref, registry, attack, target string
	seed                                       uint64
}

func newFlags(stderr io.Writer) *flags {
	f := &flags{fs: flag.NewFlagSet("flotilla-testimage", flag.ContinueOnError)}
	f.fs.SetOutput(stderr)
	f.fs.Usage = func() { fmt.Fprint(stderr, usage); f.fs.PrintDefaults() }
	f.fs.StringVar(&f.kind, "kind", "busybox", "image kind: busybox, layers, multiarch, large or hostile")
	f.fs.StringVar(&f.size, "size", "64MiB", "payload size of the large image (bytes, or with KiB, MiB, GiB, KB, MB, GB)")
	f.fs.Uint64Var(&f.seed, "seed", 1, "seed of the large image's pseudo-random data")
	f.fs.StringVar(&f.compression, "compression", "gzip", "layer compression: gzip, zstd or none")
	f.fs.StringVar(&f.format, "format", "oci", "manifest media types: oci or docker (schema 2; no zstd)")
	f.fs.StringVar(&f.busybox, "busybox", imagekit.DefaultBusybox, "busybox binary to package")
	f.fs.StringVar(&f.attack, "attack", "", "hostile kind: "+attackNames())
	f.fs.StringVar(&f.target, "target", "", "hostile kind: absolute host path the layer aims at (default "+imagekit.DefaultHostileTarget+")")
	f.fs.StringVar(&f.out, "out", "", "build: write an OCI archive to this file (- for stdout)")
	f.fs.StringVar(&f.layout, "layout", "", "build: write an OCI image layout into this directory")
	f.fs.StringVar(&f.ref, "ref", "", "image reference NAME:TAG (push: inside the registry)")
	f.fs.StringVar(&f.registry, "registry", "", "push: registry HOST:PORT, reached over plain HTTP")
	return f
}

func attackNames() string {
	var names []string
	for _, a := range imagekit.Attacks {
		names = append(names, string(a))
	}
	return strings.Join(names, ", ")
}

func (f *flags) build() (*imagekit.Image, error) {
	size, err := imagekit.ParseSize(f.size)
	if err != nil {
		return nil, err
	}
	opts := []imagekit.Option{
		imagekit.WithCompression(imagekit.Compression(f.compression)),
		imagekit.WithFormat(imagekit.Format(f.format)),
		imagekit.WithBusybox(f.busybox),
		imagekit.WithSize(size),
		imagekit.WithSeed(f.seed),
	}
	if f.kind == "hostile" {
		if f.attack == "" {
			return nil, fmt.Errorf("--kind hostile needs --attack (%s)", attackNames())
		}
		return imagekit.BuildHostile(imagekit.Attack(f.attack), f.target, opts...)
	}
	return imagekit.Build(imagekit.Kind(f.kind), opts...)
}

func (f *flags) write(img *imagekit.Image, ref string, stdout io.Writer) error {
	switch {
	case f.out != "" && f.layout != "":
		return errors.New("give --out or --layout, not both")
	case f.layout != "":
		if err := img.WriteLayout(f.layout, ref); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %s in %s\n", ref, img.Target.Digest, f.layout)
		return nil
	case f.out == "-":
		return img.WriteArchive(stdout, ref)
	case f.out != "":
		return writeFile(f.out, func(w io.Writer) error { return img.WriteArchive(w, ref) }, func() {
			fmt.Fprintf(stdout, "%s %s in %s\n", ref, img.Target.Digest, f.out)
		})
	}
	return errors.New("build needs --out FILE.tar or --layout DIR")
}

// writeFile writes through a temporary file renamed into place, so a failed build leaves no
// truncated archive behind.
func writeFile(path string, write func(io.Writer) error, done func()) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".flotilla-testimage-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	done()
	return nil
}

func (f *flags) check(dir string, stdout io.Writer) error {
	img, err := f.build()
	if err != nil {
		return err
	}
	defer img.Close()
	if img.Expected == nil {
		return fmt.Errorf("kind %s has no expected tree to check against", f.kind)
	}
	if err := img.Expected.Check(dir); err != nil {
		return fmt.Errorf("%s differs from the %s image:\n%w", dir, f.kind, err)
	}
	fmt.Fprintf(stdout, "%s holds exactly the %s image's tree (%d entries)\n", dir, f.kind, len(img.Expected))
	return nil
}
